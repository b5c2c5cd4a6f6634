#!/usr/bin/env bash
# ties, dare_ties (SVD to rank 8, then to rank 32) and a cat merge with e-commerce weighted 1.5, of the
# four current scenario adapters, each measured by `adapterhub merge` on the parents' full valid
# splits, in a scratch registry (nothing is published into adapters/).
#     bash benchmarks/merge/recipes_valid.sh > benchmarks/merge/recipes_valid.log 2>&1      # ~30 min on 2 cores
set -u
source "$(dirname "$0")/common.sh"
REG=${REG:-/tmp/merge-recipes-registry}
scratch_registry "$REG"
cd "$CODE"
for recipe in "ties" "dare_ties" "cat ecommerce=1.5" "ties --rank 32"; do
  set -- $recipe; method=$1; shift
  weights="video=1 news=1 music=1 ecommerce=1"; extra=""
  case "${1:-}" in ecommerce=*) weights="video=1 news=1 music=1 $1";; --rank) extra="$*";; esac
  echo "== $method $weights $extra $(date -u +%FT%T)"
  python -m adapterhub merge $weights --method "$method" --name grid --registry "$REG" $extra
done
echo "== done $(date -u +%FT%T)"
