# Sourced by the scripts: lets Open MPI run as root (CI and fresh machines run as root) and run more ranks than
# cores, yielding when idle so oversubscribed ranks do not spin against each other.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
