# Sourced by the deploy, test and bench scripts: the environment every mimicps
# process (and the PyTorch peer in bench/) runs with.
#
# OpenBLAS 0.3.21 (Debian 12) does not recognise recent AMD EPYC cores and falls back
# to its AVX2 "Haswell" kernels; on a CPU with the AVX-512 subset its SkylakeX kernels
# need, forcing them doubles sgemm throughput (measured: ~99 -> ~186 GFLOP/s on one
# thread). Only set when the user did not choose, and only when every flag is there
# (the kernels would die with SIGILL otherwise).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  _flags=$(grep -m1 '^flags' /proc/cpuinfo)
  _ok=1
  for _f in avx512f avx512cd avx512bw avx512dq avx512vl; do
    case " $_flags " in *" $_f "*) ;; *) _ok=0 ;; esac
  done
  if [ $_ok -eq 1 ]; then export OPENBLAS_CORETYPE=SkylakeX; fi
  unset _flags _ok _f
fi
