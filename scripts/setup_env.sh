# Sourced by demo.sh and test.sh: create ./.venv with mt installed from this checkout (once), activate it.
# torch 2.13.0 is pinned here because this machine has its CPU wheel on disk; any other
# torch from PyPI is a multi-GB CUDA build. Set MT_TORCH to install another (e.g. MT_TORCH=torch).
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -f "$repo_root/.venv/.mt-installed" ] || [ "$repo_root/pyproject.toml" -nt "$repo_root/.venv/.mt-installed" ]; then
  echo "setting up $repo_root/.venv (first run only)..." >&2
  python3 -m venv "$repo_root/.venv"
  "$repo_root/.venv/bin/pip" install -q --disable-pip-version-check "${MT_TORCH:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$repo_root/.venv/bin/pip" install -q --disable-pip-version-check -e "$repo_root[dev,plot,ctranslate2,serve]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$repo_root/.venv/bin/python" -c "import mt, torch, sentencepiece, sacrebleu, datasets" \
    || { echo "error: installing mt into $repo_root/.venv failed (see pip's messages above)" >&2; exit 1; }
  touch "$repo_root/.venv/.mt-installed"
fi
# shellcheck disable=SC1091
source "$repo_root/.venv/bin/activate"
