#!/usr/bin/env bash
# issue 15 (2026-11-29): regmean against cat-sum, both on the parents' full valid splits, as
# `adapterhub merge` measures every merge. The current versions are copied into a scratch registry,
# so nothing is published into adapters/. Run from a snapshot of the code: SNAP=/tmp/snapN;
# METHODS="regmean" ALPHA=1.0 for one regmean merge at another alpha.
set -u
cd "${SNAP:?}"
export PYTHONPATH=$SNAP ADAPTERHUB_DATA=/work/shared/data
REG=/tmp/reg_regmean
rm -rf $REG && mkdir -p $REG
for s in video news music ecommerce; do
  v=$(cat /work/main/adapters/$s/current); mkdir -p $REG/$s
  cp -r /work/main/adapters/$s/$v $REG/$s/ && echo $v > $REG/$s/current
done
for m in ${METHODS:-regmean cat}; do
  echo "== $m $(date -u +%FT%T)"
  extra=""; [ "$m" = regmean ] && extra="--regmean-alpha ${ALPHA:-0.9}"
  python -m adapterhub merge video news music ecommerce --method $m --name ${m}4 --registry $REG $extra
done
echo "== done $(date -u +%FT%T)"
