# Sourced by the scripts that run llama.cpp beside shrink: `llamacpp_build TARGET...` builds
# those tools of llama.cpp (as vendored by the llama-cpp-python 0.3.36 sdist, `pip download
# --no-binary`, cached in target/llamacpp; cmake and ninja from PyPI in a venv there; native
# CPU flags, no OpenMP, Release) and sets `lc` to its source directory (tools in $lc/build/bin).
llamacpp_build() {
  local cache=target/llamacpp ver=0.3.36 missing=()
  mkdir -p "$cache"
  if [ ! -d "$cache/llama_cpp_python-$ver" ]; then
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$ver" --dest "$cache/sdist"
    tar xzf "$cache/sdist/llama_cpp_python-$ver.tar.gz" -C "$cache"
  fi
  lc="$cache/llama_cpp_python-$ver/vendor/llama.cpp"
  for t in "$@"; do [ -x "$lc/build/bin/$t" ] || missing+=("$t"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ -x "$cache/venv/bin/cmake" ] || { python3 -m venv "$cache/venv"; "$cache/venv/bin/pip" install -q cmake ninja; }
  PATH="$cache/venv/bin:$PATH" cmake -S "$lc" -B "$lc/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF >/dev/null
  PATH="$cache/venv/bin:$PATH" cmake --build "$lc/build" -j2 --target "${missing[@]}" >/dev/null
}
