#!/usr/bin/env bash
# Packs what a sweep needs beyond torch (Ray Tune, Optuna and their dependencies) for a GPU machine
# that has torch but no network, as one archive small enough to travel with the working tree.
#
#   benchmarks/gpu/pack_sweep_deps.sh              # for the machine's Python 3.12
#   benchmarks/gpu/pack_sweep_deps.sh 3.11 DIR     # another Python, another folder
#
# Writes DIR/site.tar.xz (default .gpu-deps/, git-ignored): the wheels pinned in constraints.txt,
# unpacked, without the parts of Ray a local Tune run never loads (the Java jars, the dashboard's web
# client, RLlib, Serve, the LLM library). On the GPU machine, benchmarks/gpu/run_all.sh unpacks it
# and puts it on PYTHONPATH. W&B is not packed: the GPU benchmarks run with wandb.mode=disabled.
set -euo pipefail
python_version=${1:-3.12}
out=${2:-.gpu-deps}
root=$(cd "$(dirname "$0")/../.." && pwd)
packages=(ray optuna alembic sqlalchemy mako colorlog jsonschema jsonschema-specifications referencing
  rpds-py tensorboardX)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/wheels" \
  --python-version "$python_version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --constraint "$root/constraints.txt" "${packages[@]}"
mkdir "$work/site"
for wheel in "$work"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$work/site"  # keeps the executable bit of raylet and gcs_server
done
rm -rf "$work"/site/ray/{jars,rllib,serve,llm} "$work/site/ray/dashboard/client"
mkdir -p "$out"
tar -C "$work" -cJf "$out/site.tar.xz.partial" site
mv "$out/site.tar.xz.partial" "$out/site.tar.xz"
echo "$out/site.tar.xz: $(du -h "$out/site.tar.xz" | cut -f1) for Python $python_version (${packages[*]})"
