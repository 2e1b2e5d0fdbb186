# Sourced by demo.sh and test.sh: create ./.venv with mt installed from this checkout, activate it.
# Installs the exact versions CI tested (scripts/constraints.txt), once; again only when
# pyproject.toml, the constraints or this file change. torch 2.13.0 is the pinned version because this machine
# has its CPU wheel on disk; any other torch from PyPI is a multi-GB CUDA build. Set MT_TORCH to
# install another (e.g. MT_TORCH=torch): the constraints then leave torch to it.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
constraints="$repo_root/scripts/constraints.txt"
stamp="$repo_root/.venv/.mt-installed"
if [ ! -f "$stamp" ] || [ "$repo_root/pyproject.toml" -nt "$stamp" ] || [ "$constraints" -nt "$stamp" ] \
   || [ "${BASH_SOURCE[0]}" -nt "$stamp" ]; then
  echo "setting up $repo_root/.venv with the tested versions (scripts/constraints.txt)..." >&2
  python3 -m venv "$repo_root/.venv"
  pins="$constraints"
  if [ -n "${MT_TORCH:-}" ]; then  # the user's torch: keep its pin out of the constraints
    pins="$repo_root/.venv/constraints-without-torch.txt"
    grep -v '^torch==' "$constraints" > "$pins"
  fi
  mt_pip_install() {  # pip's status is kept; its notes about this machine's extra indexes are not shown
    "$repo_root/.venv/bin/pip" install -q --disable-pip-version-check -c "$pins" "$@" \
      2> >(grep -v "^WARNING: Location" >&2)
  }
  if ! mt_pip_install "${MT_TORCH:-torch}" || ! mt_pip_install -e "$repo_root[dev,plot,ctranslate2,serve,argos]" \
      || ! "$repo_root/.venv/bin/python" -c "import mt, torch, sentencepiece, sacrebleu, datasets"; then
    echo "error: installing mt into $repo_root/.venv failed (see pip's messages above)" >&2
    exit 1
  fi
  unset -f mt_pip_install
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$repo_root/.venv/bin/activate"
