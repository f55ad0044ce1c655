# Sourced by the performance scripts (perf-compare.sh, scale-test.sh):
# reading one figure from a server's Prometheus text.
#
#   metric URL NAME   the value of the unlabelled metric NAME on URL/metrics,
#                     as an integer; fails when the server does not answer

metric() {
  curl -fsS "$1/metrics" | awk -v m="$2" '$1 == m { printf "%d\n", $2 }'
}
