// The device communicators of a CUDA job: groups.tp_device (NCCL over the tp MPI group, on the CUDA backend's
// stream) and the wait monitor that makes the backend's host waits notice NCCL errors and --nccl-timeout.
// Compiled into every build; without CUDA, or without the CUDA backend's header, --device cuda with tp > 1 is
// refused with the reason instead of running without NCCL.
#include "launch/job.h"
#include "runtime/base/log.h"

#if defined(STRATA_WITH_CUDA) && __has_include("runtime/backend/cuda/cuda_backend.h")
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/comm/nccl/nccl_communicator.h"
#define STRATA_DEVICE_GROUPS 1
#endif

namespace strata {

void attach_device_groups(Job& job) {
  if (job.parallel.device != "cuda" || job.groups.tp->size() == 1 || job.groups.tp_device) return;
#ifdef STRATA_DEVICE_GROUPS
  NcclOptions options;
  options.timeout_seconds = job.parallel.nccl_timeout;
  options.label = cat("tp group of world rank ", job.layout->world_rank(), " (", job.layout->coordinates(), ")");
  // device -1: the GPU the CUDA backend bound this rank to; the stream is the backend's, so the all-reduces sit in
  // order between its kernels (and inside its CUDA graphs).
  auto nccl = make_nccl_communicator(*job.groups.tp, -1, cuda_backend_stream(*job.backend), options);
  NcclCommunicator* poll_target = nccl.get();  // owned by job.groups, which outlives job.backend (declared first)
  set_cuda_wait_monitor(
      *job.backend, [poll_target] { poll_target->poll_async_error(); }, job.parallel.nccl_timeout);
  if (job.layout->world_rank() == 0)
    log_info("NCCL ", nccl_version(), ": tensor-parallel all-reduces on the GPU (", job.groups.tp->size(),
             " ranks per group, timeout ", job.parallel.nccl_timeout, " s)");
  job.groups.tp_device = std::move(nccl);
#else
  throw Error(ErrorKind::Usage, cat("--device cuda with tensor-parallel size ", job.groups.tp->size(),
                                    " needs NCCL and the CUDA backend, which this strata was built without"));
#endif
}

}  // namespace strata
