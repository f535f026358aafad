{
  "targets": [
    {
      "target_name": "twinfs_posix",
      "sources": ["twinfs_posix.c"],
      "include_dirs": ["../common"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
