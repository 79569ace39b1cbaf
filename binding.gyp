{
  "targets": [
    {
      "target_name": "tsvmm_native",
      "sources": ["native/tsvmm.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++20", "-O2", "-Wall", "-Wextra"]
    }
  ]
}
