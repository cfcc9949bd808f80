#!/usr/bin/env bash
# The wheels bench/gpu_suite.py needs on the GPU machine, downloaded into .whl/ at the repository
# root (ignored by git; the device tool's `run` carries it with `carry: [".whl"]`).
#
# That machine has Python 3.12, torch 2.11, transformers 5.17, huggingface-hub 1.33, tokenizers
# 0.23.2, safetensors, numpy, pyarrow, fsspec, httpx, anyio, annotated-doc and typer, no internet,
# and no pydantic, FastAPI, OpenTelemetry, Ray or SQLAlchemy (the device tool's KINDS.md, read
# 2026-11-30). The suite needs:
#   * transformers at the project's pin (pyproject.toml), the plug-ins reach into its internals;
#     its dependencies are all on the machine in versions it accepts;
#   * for the `serve` section, `serving.engine`'s imports: pydantic (serving.schemas) with its
#     dependencies that the machine lacks (the error types in serving.errors import no web
#     framework; the FastAPI handlers live in serving.error_handlers); and fsspec at the
#     project's floor.
# No Ray, no s3fs, no SQLAlchemy: the suite imports none of them.
# Versions: those the suite is tested with here (the dev venv). --no-deps, so every wheel is
# named; one version of each, or the install on the machine stops. Total ~16 MiB of the 64 MiB
# that travel with a call.
#
#     bash bench/gpu_wheels.sh        # empties .whl/, downloads, prints the total size
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  transformers==5.23.0       # the project's pin; the machine has 5.17
  pydantic==2.14.4           # serving.schemas
  pydantic-core==2.50.5      # pydantic's compiled core (exact pin of pydantic 2.14.4)
  annotated-types==0.8.0     # pydantic
  typing-inspection==0.4.5   # pydantic
  typing-extensions==4.16.0  # pydantic needs >= 4.16.0; the machine's version is not known
  fsspec==2026.9.0           # storage.token_files; the project needs >= 2026.1, the machine's
                             # version is not known (pure Python, 0.2 MiB)
)

rm -rf .whl
mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

count=$(ls .whl/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "expected ${#WHEELS[@]} wheels in .whl, found $count" >&2
  exit 1
fi
ls -l .whl
echo "total: $(du -cb .whl/*.whl | tail -1 | cut -f1) bytes in $count wheels"
