-- herald build. Written in the subset premake4 and premake5 both accept:
--   premake4 --file=premake5.lua gmake   (Debian 12)
--   premake5 gmake                       (where premake5 is installed)
-- release -> build/bin/herald (optimised)
-- debug   -> build/debug/bin/herald (AddressSanitizer + UndefinedBehaviorSanitizer)

solution "herald"
  configurations { "release", "debug" }
  location "build"

  project "herald"
    kind "ConsoleApp"
    language "C"
    files { "runtime/**.c", "runtime/**.h", "lua/**.c", "lua/**.h" }
    includedirs { ".", "/usr/include/lua5.4" }
    buildoptions { "-std=gnu11", "-Wall", "-Wextra", "-Wshadow", "-Wno-unused-parameter",
                   "-fno-strict-aliasing", "`pkg-config --cflags glib-2.0 gmime-3.0`" }
    links { "json_simd", "simdjson", "stdc++", "lua5.4", "uv", "sqlite3", "curl", "edit", "jansson", "http_parser", "crypto",
            "gmime-3.0", "gio-2.0", "gobject-2.0", "glib-2.0", "m", "pthread", "dl" }
    -- Lua C modules loaded at run time (busted's helpers) resolve the Lua API against us.
    linkoptions { "-Wl,-E" }

    configuration "release"
      flags { "Symbols" }
      targetdir "build/bin"
      objdir "build/obj/release"
      defines { "NDEBUG" }
      buildoptions { "-O2", "-g" }
      -- jemalloc replaces glibc's malloc in the release build: an import allocates and frees
      -- millions of small JSON values on two threads, where glibc's malloc spent a quarter of
      -- the parser thread's time (1M endpoints: 25% less CPU in all). The debug build keeps
      -- the sanitizers' allocator.
      links { "jemalloc" }

    configuration "debug"
      flags { "Symbols" }
      targetdir "build/debug/bin"
      objdir "build/obj/debug"
      defines { "HERALD_DEBUG" }
      buildoptions { "-O1", "-g", "-fno-omit-frame-pointer",
                     "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined" }
      linkoptions { "-fsanitize=address,undefined" }

  -- simdjson's reader for imports (runtime/json_simd.h): the one C++ translation unit, with a C
  -- interface, built as its own static library. No exceptions cross into C.
  project "json_simd"
    kind "StaticLib"
    language "C++"
    files { "runtime/cxx/*.cc" }
    includedirs { "." }
    buildoptions { "-std=c++17", "-fno-exceptions", "-Wall", "-Wextra", "-Wshadow" }

    configuration "release"
      flags { "Symbols" }
      targetdir "build/lib"
      objdir "build/obj/release/json_simd"
      defines { "NDEBUG" }
      buildoptions { "-O2", "-g" }

    configuration "debug"
      flags { "Symbols" }
      targetdir "build/debug/lib"
      objdir "build/obj/debug/json_simd"
      buildoptions { "-O1", "-g", "-fno-omit-frame-pointer",
                     "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined" }
