# Sourced by the scripts here. HERE: this folder (results go here); REPO: the checkout whose adapters/
# are measured. SNAP (optional): a copy of the code to run, so that edits in the checkout during a
# long run do not change what runs. Real data: $ADAPTERHUB_DATA, else REPO/../shared/data.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export ADAPTERHUB_DATA=${ADAPTERHUB_DATA:-$REPO/../shared/data}
CODE=${SNAP:-$REPO}
export PYTHONPATH=$CODE

# scratch_registry DIR: a registry holding a copy of each scenario adapter's current version
scratch_registry() {
  rm -rf "$1" && mkdir -p "$1"
  for s in video news music ecommerce; do
    v=$(cat "$REPO/adapters/$s/current"); mkdir -p "$1/$s"
    cp -r "$REPO/adapters/$s/$v" "$1/$s/" && echo "$v" > "$1/$s/current"
  done
}
