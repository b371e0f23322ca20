# Sourced by build.sh and test.sh: puts the pinned build tools (requirements.txt) into a
# virtual environment, .venv, on first use.
if [[ ! -x .venv/bin/componentize-py ]]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt ||
        { echo "error: pip could not install componentize-py; check that PyPI is reachable" >&2; exit 1; }
fi
