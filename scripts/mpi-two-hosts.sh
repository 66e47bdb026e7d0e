#!/usr/bin/env bash
# Multi-leader LSGD, 2 groups × 2 ranks, over two emulated hosts.
#
# Two network namespaces (pelA, pelB) joined by a veth pair are the hosts nodeA and nodeB
# (10.123.0.1 and 10.123.0.2, no other route). Open MPI's launcher reaches nodeB through a
# small stand-in for ssh (plm_rsh_agent) that enters the other namespace with its own host
# name, so MPI sees two nodes: ranks 0–1 on nodeA, 2–3 on nodeB, TCP between the hosts
# (shared memory inside each). peloton detects the nodes (MPI_Comm_split_type SHARED) and
# forms one LSGD group per node, because algorithm.group_size is not set.
#
# Needs root, iproute2, util-linux (unshare), Open MPI and a peloton built with the `mpi`
# feature:  cargo build --release -p peloton-cli --features mpi
# Usage:    sudo scripts/mpi-two-hosts.sh [extra peloton train flags]
#           (PELOTON=path/to/peloton picks another binary, e.g. target/debug/peloton;
#            OUT=DIR keeps the run folder there instead of a temporary folder)
# Exit code: peloton's (0 when the run finished and the summary says ok).
set -euo pipefail
cd "$(dirname "$0")/.."
peloton="$(realpath "${PELOTON:-${CARGO_TARGET_DIR:-target}/release/peloton}")"
[ -x "$peloton" ] || { echo "error: $peloton not found: build with --features mpi first" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "error: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 1; }

work="$(mktemp -d)"
cleanup() {
    ip netns del pelA 2>/dev/null || true
    ip netns del pelB 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_ns_only() { ip netns del pelA 2>/dev/null || true; ip netns del pelB 2>/dev/null || true; }
cleanup_ns_only

ip netns add pelA
ip netns add pelB
ip link add vethA netns pelA type veth peer name vethB netns pelB
ip -n pelA addr add 10.123.0.1/24 dev vethA
ip -n pelB addr add 10.123.0.2/24 dev vethB
for ns in pelA pelB; do
    ip -n "$ns" link set lo up
done
ip -n pelA link set vethA up
ip -n pelB link set vethB up

# The stand-in for ssh: `agent HOST COMMAND...` runs COMMAND in HOST's namespace under HOST's
# name, as ssh would run it on that machine (one shell command line).
cat > "$work/agent.sh" <<'EOF'
#!/bin/sh
host="$1"; shift
case "$host" in
    nodeA) ns=pelA ;;
    nodeB) ns=pelB ;;
    *) echo "agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host; $*"
EOF
chmod +x "$work/agent.sh"
printf 'nodeA slots=2\nnodeB slots=2\n' > "$work/hosts"

out="${OUT:-$work/run}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
set +e
ip netns exec pelA unshare --uts sh -c "hostname nodeA; exec timeout 300 mpirun -n 4 \
    --hostfile $work/hosts \
    --mca plm_rsh_agent $work/agent.sh \
    --mca btl self,vader,tcp --mca pml ob1 \
    --mca btl_tcp_if_include 10.123.0.0/24 --mca oob_tcp_if_include 10.123.0.0/24 \
    $peloton train --transport mpi --problem softmax --algorithm lsgd \
        --set algorithm.lambda_global=0.2 --steps 400 --out $out $*"
rc=$?
set -e
if [ -f "$out/summary.json" ]; then
    grep -E '"status"|"accuracy"|"workers"' "$out/summary.json" | head -5
    grep -o '"leader":[0-9]*' "$out/metrics.jsonl" | sort | uniq -c
fi
echo "mpirun exit code: $rc"
exit "$rc"
