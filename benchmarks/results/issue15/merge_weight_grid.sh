# ties, dare_ties and a weighted cat merge of the four current adapters, each measured by `adapterhub merge` on the parents' full valid splits (in a scratch registry); output: merge_weight_grid.log
while pgrep -f "adapterhub.bench.merge" >/dev/null || pgrep -f "adapterhub train joint4" >/dev/null; do sleep 10; done
cd /tmp/snap2
export PYTHONPATH=/tmp/snap2 ADAPTERHUB_DATA=/work/shared/data
rm -rf /tmp/grid/reg && mkdir -p /tmp/grid/reg
for s in video news music ecommerce; do v=$(cat /work/main/adapters/$s/current); mkdir -p /tmp/grid/reg/$s; cp -r /work/main/adapters/$s/$v /tmp/grid/reg/$s/; echo $v > /tmp/grid/reg/$s/current; done
for m in "ties" "dare_ties" "cat ecommerce=1.5"; do
  set -- $m; method=$1; shift
  if [ $# -gt 0 ]; then args="video=1 news=1 music=1 $*"; else args="video=1 news=1 music=1 ecommerce=1"; fi
  date; echo "== $method $args"
  python -m adapterhub merge $args --method $method --name grid --registry /tmp/grid/reg
done
date
# then, run by hand: ties at rank 32 (the sum of the parents' ranks, as cat) instead of the largest parent's 8
python -m adapterhub merge video=1 news=1 music=1 ecommerce=1 --method ties --rank 32 --name grid --registry /tmp/grid/reg
