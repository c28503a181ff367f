# Sourced by the launchers: preload tcmalloc when installed (XLA's per-step buffer churn is
# ~40% cheaper with it on CPU; TPU VM images preload it too). VLMJAX_NO_TCMALLOC=1 disables.
if [ -z "${VLMJAX_NO_TCMALLOC:-}" ]; then
  for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
             /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4; do
    if [ -f "$lib" ]; then
      case ":${LD_PRELOAD:-}:" in *":$lib:"*) ;; *) export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" ;; esac
      break
    fi
  done
fi
