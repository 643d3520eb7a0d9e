#!/bin/sh
# Open MPI launch agent for network-namespace fake nodes (see netns_nodes.py): like ssh, it gets a host and one
# command line; it runs the command in that host's network namespace (`ip netns exec`, which also shows the
# namespace's own /sys/class/net and /etc/netns/NS/hosts) and in a UTS namespace named after the host.
# STRATA_NETNS_MAP names a file of "host namespace" lines.
host=$1; shift
ns=$(awk -v h="$host" '$1 == h { print $2 }' "$STRATA_NETNS_MAP")
[ -n "$ns" ] || { echo "netns_agent: no namespace for host '$host' in $STRATA_NETNS_MAP" >&2; exit 1; }
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0" && eval "$1"' "$host" "$*"
