# conclua: Lua 5.4 with threads and processes.
#
#   make demo      build, then run scripts/demo.lua
#   make test      build, check the layers, then run the whole suite
#   make layers    vm/ depends only downward, no unprefixed global
#   make asan      the suite under AddressSanitizer + UBSan
#   make tsan      the thread and channel tests under ThreadSanitizer
#   make stress    concurrency tests in loops of many runs
#   make conformance  Lua 5.4.4's test suite under conclua (LUA_TESTS=dir)
#   make fuzz      the decoder under libFuzzer (FUZZ_SECONDS=60)
#   make bench     benchmarks, with baselines measured in the same run
#   make install PREFIX=/usr/local
#   make clean
#
# demo and test install missing Debian packages when run as root, and
# otherwise print the apt-get line to run.

PREFIX ?= /usr/local
BUILD ?= build
CC ?= gcc
SAN ?=
OPT ?= -O2
WERROR ?=

DEBS = liblua5.4-dev libreadline-dev pkg-config
TEST_DEBS = lua5.4 tmux
# for the tests of luarocks make and of the manual page: installed when
# root, else those tests are skipped, saying why
OPT_TEST_DEBS = luarocks groff-base man-db
BENCH_DEBS = python3
MPI_DEBS = libopenmpi-dev openmpi-bin
MPI_BENCH_DEBS = python3-mpi4py

LUA_CFLAGS = $(shell pkg-config --cflags lua5.4) $(if $(LUA_INCDIR),-I$(LUA_INCDIR))
LUA_LIBS = $(shell pkg-config --libs lua5.4)
# readline is not linked: the REPL loads it (dlopen) by this name
RL_SONAME = $(or $(shell readelf -d "$$($(CC) -print-file-name=libreadline.so)" \
              2>/dev/null | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p'),libreadline.so.8)

# conc.mpi is built when pkg-config finds an MPI (Open MPI, else MPICH);
# only the module links it, never conclua or libconclua
MPI_PC = $(shell pkg-config --exists ompi-c 2>/dev/null && echo ompi-c || \
           { pkg-config --exists mpich 2>/dev/null && echo mpich; })
MPI_CFLAGS = $(if $(MPI_PC),$(shell pkg-config --cflags $(MPI_PC)))
MPI_LIBS = $(if $(MPI_PC),$(shell pkg-config --libs $(MPI_PC)))
MPI_MOD = $(if $(MPI_PC),$(BUILD)/conc/mpi.so)

CFLAGS = -std=gnu11 $(OPT) -g -Wall -Wextra $(if $(WERROR),-Werror) \
         -fPIC -fvisibility=hidden -pthread -D_GNU_SOURCE \
         -DCONCLUA_BINDIR='"$(PREFIX)/bin"' $(LUA_CFLAGS) $(SAN)
LDFLAGS = -pthread $(SAN)

LIB_SRC = $(filter-out vm/main.c vm/repl.c vm/pretty.c,$(wildcard vm/*.c))
LIB_OBJ = $(patsubst vm/%.c,$(BUILD)/obj/%.o,$(LIB_SRC)) $(BUILD)/obj/stdlib_gen.o
BIN_OBJ = $(BUILD)/obj/main.o $(BUILD)/obj/repl.o $(BUILD)/obj/pretty.o
STDLIB = $(shell find stdlib -name '*.lua' 2>/dev/null | sort)
VERSION = $(shell sed -n 's/^\#define CONCLUA_VERSION "conclua \(.*\)"/\1/p' vm/conclua.h)
CTESTS = $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(wildcard tests/c/test_*.c))
HEADERS = $(wildcard vm/*.h)
SOVERSION = 0

.PHONY: all deps test-deps mpi-deps demo test check layers rock rock-install \
        asan tsan stress fuzz bench conformance install uninstall clean

all: $(BUILD)/conclua $(BUILD)/libconclua.a $(BUILD)/libconclua.so \
     $(BUILD)/conc.so $(CTESTS) $(BUILD)/tests/test_hostnames_so $(MPI_MOD)

$(BUILD)/obj/%.o: vm/%.c $(HEADERS) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/repl.o: CFLAGS += -DCONC_RL_SONAME='"$(RL_SONAME)"'

$(BUILD)/obj/stdlib_gen.o: $(BUILD)/stdlib_gen.c $(HEADERS)
	$(CC) $(CFLAGS) -Ivm -c $< -o $@

$(BUILD)/stdlib_gen.c: $(STDLIB) $(BUILD)/embed
	$(BUILD)/embed $@ stdlib $(STDLIB)

$(BUILD)/embed: vm/tools/embed.c | $(BUILD)/obj
	$(CC) -O1 -Wall -Wextra vm/tools/embed.c -o $@

$(BUILD)/obj:
	mkdir -p $(BUILD)/obj $(BUILD)/tests

$(BUILD)/libconclua.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $(LIB_OBJ)

# the shared library's soname carries its ABI version; libconclua.so is
# the link for -lconclua
$(BUILD)/libconclua.so.$(SOVERSION): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libconclua.so.$(SOVERSION) -o $@ $(LIB_OBJ) \
	  $(LDFLAGS) $(LUA_LIBS) -ldl -lm

$(BUILD)/libconclua.so: $(BUILD)/libconclua.so.$(SOVERSION)
	ln -sf libconclua.so.$(SOVERSION) $@

# the module for lua5.4: Lua's symbols come from the interpreter
$(BUILD)/conc.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $(LIB_OBJ) $(LDFLAGS) -ldl -lm

# conc.mpi: MPI plus the Lua API; the core's functions it reaches through
# the table of vm/mpiapi.h, from the core that is loaded
$(BUILD)/conc/mpi.so: vm/mpi/mpi.c vm/mpiapi.h
	@mkdir -p $(BUILD)/conc
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -shared vm/mpi/mpi.c -o $@ $(LDFLAGS) \
	  $(MPI_LIBS) -ldl

# -z now: a forked child does not fault in lazy symbol bindings
$(BUILD)/conclua: $(BIN_OBJ) $(BUILD)/libconclua.a
	$(CC) -o $@ -Wl,-z,now $(BIN_OBJ) $(BUILD)/libconclua.a $(LDFLAGS) $(LUA_LIBS) \
	  -ldl -lm

$(BUILD)/tests/%: tests/c/%.c $(BUILD)/libconclua.a $(HEADERS) \
                  $(wildcard tests/c/*.h)
	$(CC) $(CFLAGS) -Ivm $< -o $@ $(BUILD)/libconclua.a $(LDFLAGS) \
	  $(CTEST_LDFLAGS) $(LUA_LIBS) -ldl -lm

# the host-names test once more, against the shared library
$(BUILD)/tests/test_hostnames_so: tests/c/test_hostnames.c \
                                  $(BUILD)/libconclua.so $(wildcard tests/c/*.h)
	$(CC) $(CFLAGS) -Ivm $< -o $@ -L$(BUILD) -lconclua \
	  -Wl,-rpath,'$$ORIGIN/..' $(LDFLAGS) $(LUA_LIBS) -ldl -lm

# the out-of-memory test puts an allocator that fails on demand in front
# of the library's own malloc calls (the Lua library is a shared one: its
# calls are left alone)
$(BUILD)/tests/test_oom: CTEST_LDFLAGS = \
  -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc

# ------------------------------------------------------------ set-up

define need_debs
	@missing=""; \
	for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing Debian packages; run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

# Like need_debs, for what only some tests use: missing and not root, it
# says so and goes on.
define want_debs
	@missing=""; \
	for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null || true; \
	  else \
	    echo "not installed:$$missing (the tests that need them are skipped;"; \
	    echo "  to run them: sudo apt-get install -y$$missing)"; \
	  fi; \
	fi
endef

deps:
	$(call need_debs,$(DEBS))

test-deps: deps
	$(call need_debs,$(TEST_DEBS))
	$(call want_debs,$(OPT_TEST_DEBS))

# MPI for conc.mpi's tests: installed when root, else the line to run
# (the tests are then reported as skipped, with the reason)
MPI_WANT ?= $(MPI_DEBS)
mpi-deps:
	@missing=""; \
	for p in $(MPI_WANT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
	      echo "could not install$$missing: what needs them will be skipped"; \
	  else \
	    echo "conc.mpi needs MPI; to build and test it, run:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	  fi; \
	fi

demo: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/conclua scripts/demo.lua

# ------------------------------------------------------------ tests

test: test-deps mpi-deps
	@$(MAKE) --no-print-directory all layers
	@CONCLUA_BUILD=$(BUILD) $(BUILD)/conclua tests/run.lua

# no file of vm/ uses one of a layer above its own, and every global of
# the library is conclua_*, luaopen_conc* or conc_* (vm/tools/layers.sh)
layers: $(LIB_OBJ) $(BIN_OBJ)
	@sh vm/tools/layers.sh $(BUILD)/obj && echo "layers: ok"

check: test

asan: test-deps
	@$(MAKE) --no-print-directory BUILD=build/asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  CONCLUA_BUILD=build/asan CONCLUA_SANITIZER=asan \
	  build/asan/conclua tests/run.lua

tsan: test-deps
	@$(MAKE) --no-print-directory BUILD=build/tsan OPT=-O1 \
	  SAN="-fsanitize=thread" all
	@TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
	  CONCLUA_BUILD=build/tsan CONCLUA_SANITIZER=tsan \
	  build/tsan/conclua tests/run.lua threads channel sync shared select pool pinned

stress: test-deps
	@$(MAKE) --no-print-directory all
	@CONCLUA_BUILD=$(BUILD) $(BUILD)/conclua tests/stress.lua

# Lua.org's suite, from LUA_TESTS (default ../shared/lua-tests/5.4.4 next
# to the repository), run from a temporary copy: tests/conformance.sh
conformance: deps
	@$(MAKE) --no-print-directory $(BUILD)/conclua
	@CONCLUA_BUILD=$(BUILD) LUA_TESTS="$(LUA_TESTS)" tests/conformance.sh

# the decoder and only the layers below it (vm/tools/layers.sh --files)
FUZZ_SRC = $(shell sh vm/tools/layers.sh --files values)

fuzz: test-deps
	@mkdir -p build/fuzz tests/fuzz/corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=undefined -D_GNU_SOURCE \
	  -fvisibility=hidden -Ivm $(LUA_CFLAGS) tests/fuzz/fuzz_decode.c \
	  $(FUZZ_SRC) -o build/fuzz/fuzz_decode $(LUA_LIBS) -ldl -lm -pthread
	build/fuzz/fuzz_decode -max_total_time=$${FUZZ_SECONDS:-60} \
	  -max_len=4096 tests/fuzz/corpus

bench: deps
	@$(MAKE) --no-print-directory mpi-deps MPI_WANT="$(MPI_DEBS) $(MPI_BENCH_DEBS)"
	@$(MAKE) --no-print-directory all
	$(call need_debs,$(BENCH_DEBS))
	@CONCLUA_BUILD=$(BUILD) tests/bench/run.sh

# ------------------------------------------------------------ install

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib \
	  $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4 $(DESTDIR)$(PREFIX)/share/lua/5.4/conc \
	  $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(BUILD)/conclua $(DESTDIR)$(PREFIX)/bin/conclua
	install -m 644 $(BUILD)/libconclua.a $(DESTDIR)$(PREFIX)/lib/libconclua.a
	install -m 755 $(BUILD)/libconclua.so.$(SOVERSION) \
	  $(DESTDIR)$(PREFIX)/lib/libconclua.so.$(SOVERSION)
	ln -sf libconclua.so.$(SOVERSION) $(DESTDIR)$(PREFIX)/lib/libconclua.so
	install -m 644 vm/conclua.h $(DESTDIR)$(PREFIX)/include/conclua.h
	install -m 644 docs/conclua.1 $(DESTDIR)$(PREFIX)/share/man/man1/conclua.1
	install -m 755 $(BUILD)/conc.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/conc.so
	if [ -f $(BUILD)/conc/mpi.so ]; then \
	  install -d $(DESTDIR)$(PREFIX)/lib/lua/5.4/conc; \
	  install -m 755 $(BUILD)/conc/mpi.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/conc/mpi.so; fi
	for f in $(STDLIB); do \
	  install -m 644 $$f $(DESTDIR)$(PREFIX)/share/lua/5.4/$${f#stdlib/}; done
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	  vm/tools/conclua.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/conclua.pc

# luarocks make (conclua-dev-1.rockspec): conc.so for the stock lua5.4,
# conc.mpi when pkg-config finds an MPI, and the stdlib modules, into the
# rock tree LuaRocks names
rock: $(BUILD)/conc.so $(MPI_MOD)

rock-install: rock
	install -d $(INST_LIBDIR) $(INST_LUADIR)/conc
	install -m 755 $(BUILD)/conc.so $(INST_LIBDIR)/conc.so
	if [ -f $(BUILD)/conc/mpi.so ]; then \
	  install -d $(INST_LIBDIR)/conc; \
	  install -m 755 $(BUILD)/conc/mpi.so $(INST_LIBDIR)/conc/mpi.so; fi
	for f in $(STDLIB); do \
	  install -m 644 $$f $(INST_LUADIR)/$${f#stdlib/}; done

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/conclua $(DESTDIR)$(PREFIX)/lib/libconclua.a \
	  $(DESTDIR)$(PREFIX)/lib/libconclua.so $(DESTDIR)$(PREFIX)/include/conclua.h \
	  $(DESTDIR)$(PREFIX)/lib/libconclua.so.$(SOVERSION) \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4/conc.so \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4/conc/mpi.so \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig/conclua.pc \
	  $(DESTDIR)$(PREFIX)/share/man/man1/conclua.1
	rm -rf $(DESTDIR)$(PREFIX)/share/lua/5.4/conc

clean:
	rm -rf build
