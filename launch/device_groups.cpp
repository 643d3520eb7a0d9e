// The device communicators of a CUDA job: groups.tp_device (NCCL over the tp MPI group, on the CUDA backend's
// stream) and the wait monitor that makes the backend's host waits notice NCCL errors and --nccl-timeout.
// Compiled into every build; without CUDA, or without the CUDA backend's header, --device cuda with tp > 1 is
// refused with the reason instead of running without NCCL.
#include "launch/session.h"
#include "runtime/base/log.h"

#if defined(STRATA_WITH_CUDA) && __has_include("runtime/backend/cuda/cuda_backend.h")
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/comm/nccl/nccl_communicator.h"
#define STRATA_DEVICE_GROUPS 1
#endif

namespace strata {

void Session::attach_device_groups() {
  if (plan_.device != DeviceKind::Cuda || groups_.tp->size() == 1 || groups_.tp_device) return;
#ifdef STRATA_DEVICE_GROUPS
  NcclOptions options;
  options.timeout_seconds = parallel_.nccl_timeout;
  options.label = cat("tp group of world rank ", layout_->world_rank(), " (", layout_->coordinates(), ")");
  // device -1: the GPU the CUDA backend bound this rank to; the stream is the backend's, so the all-reduces sit in
  // order between its kernels (and inside its CUDA graphs).
  auto nccl = make_nccl_communicator(*groups_.tp, -1, cuda_backend_stream(*backend_), options);
  NcclCommunicator* poll_target = nccl.get();  // owned by groups_, which outlives backend_ (declared first)
  set_cuda_wait_monitor(
      *backend_, [poll_target] { poll_target->poll_async_error(); }, parallel_.nccl_timeout);
  if (layout_->world_rank() == 0)
    log_info("NCCL ", nccl_version(), ": tensor-parallel all-reduces on the GPU (", groups_.tp->size(),
             " ranks per group, timeout ", parallel_.nccl_timeout, " s)");
  groups_.tp_device = std::move(nccl);
#else
  throw Error(ErrorKind::Usage, cat("--device cuda with tensor-parallel size ", groups_.tp->size(),
                                    " needs NCCL and the CUDA backend, which this strata was built without"));
#endif
}

}  // namespace strata
