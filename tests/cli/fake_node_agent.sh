#!/bin/sh
# Open MPI launch agent for fake nodes: like ssh, it gets a host and one command line for a shell; it runs that
# command in a UTS namespace whose hostname is the host's name.
host=$1; shift
exec unshare --uts sh -c 'hostname "$0" && eval "$1"' "$host" "$*"
