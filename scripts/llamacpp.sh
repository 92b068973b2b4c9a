# Sourced by the scripts that run llama.cpp beside shrink: `llamacpp_build TARGET...` builds
# those tools of llama.cpp (as vendored by the llama-cpp-python 0.3.36 sdist, `pip download
# --no-binary`, cached in target/llamacpp; cmake and ninja from PyPI in a venv there; Release,
# no OpenMP) and sets `lc` to its source directory and `lcbin` to the tools' directory.
#
# The instruction sets are this CPU's, named one by one from /proc/cpuinfo (AVX2, FMA, F16C,
# BMI2, AVX-512 F/VNNI/VBMI/BF16, AVX-VNNI) rather than -march=native, which also turns on
# AMX where the CPU lists it: on the Xeon machines of this kind the VM's kernel refuses AMX tiles
# and a native build dies with SIGILL in ggml_backend_amx_mul_mat on its first quantized product.
llamacpp_build() {
  local cache=target/llamacpp ver=0.3.36 missing=() flags=() f
  mkdir -p "$cache"
  if [ ! -d "$cache/llama_cpp_python-$ver" ]; then
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$ver" --dest "$cache/sdist"
    tar xzf "$cache/sdist/llama_cpp_python-$ver.tar.gz" -C "$cache"
  fi
  lc="$cache/llama_cpp_python-$ver/vendor/llama.cpp"
  lcbin="$lc/build-cpu/bin"
  for t in "$@"; do [ -x "$lcbin/$t" ] || missing+=("$t"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  local have
  have=$(grep -m1 '^flags' /proc/cpuinfo)
  for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512_vnni:AVX512_VNNI \
    avx512_vbmi:AVX512_VBMI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    if grep -qw "${f%%:*}" <<< "$have"; then flags+=("-DGGML_${f#*:}=ON"); else flags+=("-DGGML_${f#*:}=OFF"); fi
  done
  [ -x "$cache/venv/bin/cmake" ] || { python3 -m venv "$cache/venv"; "$cache/venv/bin/pip" install -q cmake ninja; }
  PATH="$cache/venv/bin:$PATH" cmake -S "$lc" -B "$lc/build-cpu" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF "${flags[@]}" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
    -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF >/dev/null
  PATH="$cache/venv/bin:$PATH" cmake --build "$lc/build-cpu" -j2 --target "${missing[@]}" >/dev/null
}
