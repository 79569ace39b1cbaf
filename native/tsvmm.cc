// tsvmm native shim: the system calls the VMM needs, nothing more.
//
// Policy (which ioctl, which struct layout, what an error means for the VM) lives in TypeScript;
// this file only turns JavaScript values into syscall arguments and errno into JavaScript errors.
// Struct layouts are built by the caller in ArrayBuffers; pointers inside them come from addressOf().

#include <napi.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <unistd.h>

#include <unordered_map>
#include <uv.h>

// The one V8 detail: N-API has no SharedArrayBuffer over foreign memory, and guest memory must be one
// SharedArrayBuffer seen by every worker (Atomics included). See mmapShared().
#include <v8.h>

namespace {

Napi::Error ErrnoError(Napi::Env env, const char* op, int err) {
  const char* name = strerrorname_np(err);
  std::string msg = std::string(op) + ": " + strerror(err) + " (" + (name ? name : "E?") + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, op));
  return e;
}

#define THROW_ERRNO(env, op, ret)                        \
  do {                                                   \
    ErrnoError(env, op, errno).ThrowAsJavaScriptException(); \
    return ret;                                          \
  } while (0)

#define THROW_TYPE(env, msg, ret)                                 \
  do {                                                            \
    Napi::TypeError::New(env, msg).ThrowAsJavaScriptException(); \
    return ret;                                                   \
  } while (0)

int ArgInt(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int32Value(); }

// napi_value is the address of a v8::Local's slot in Node (v8impl::V8LocalValueFromJsValue does this).
v8::Local<v8::Value> ToV8(napi_value v) {
  v8::Local<v8::Value> local;
  memcpy(static_cast<void*>(&local), &v, sizeof(v));
  return local;
}

// A pointer and length for any ArrayBuffer, SharedArrayBuffer, typed array or DataView — through V8,
// because N-API refuses views of a SharedArrayBuffer, and guest memory is one.
bool BufferOf(Napi::Value value, void** ptr, size_t* len) {
  v8::Local<v8::Value> v = ToV8(value);
  if (v->IsArrayBufferView()) {
    auto view = v.As<v8::ArrayBufferView>();
    *ptr = static_cast<uint8_t*>(view->Buffer()->Data()) + view->ByteOffset();
    *len = view->ByteLength();
    return true;
  }
  if (v->IsArrayBuffer()) {
    auto ab = v.As<v8::ArrayBuffer>();
    *ptr = ab->Data();
    *len = ab->ByteLength();
    return true;
  }
  if (v->IsSharedArrayBuffer()) {
    auto sab = v.As<v8::SharedArrayBuffer>();
    *ptr = sab->Data();
    *len = sab->ByteLength();
    return true;
  }
  return false;
}

// Integer argument that may come as a Number or a BigInt (addresses do).
uint64_t ArgU64(Napi::Value v) {
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  return static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), ArgInt(info, 1) | O_CLOEXEC);
  if (fd < 0) THROW_ERRNO(env, ("open " + path).c_str(), env.Null());
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (close(ArgInt(info, 0)) < 0) THROW_ERRNO(env, "close", env.Null());
  return env.Undefined();
}

// ioctl(fd, request, arg?, name?) -> result. arg: number/bigint (passed by value) or a buffer (passed by pointer).
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = ArgInt(info, 0);
  unsigned long req = static_cast<unsigned long>(ArgU64(info[1]));
  unsigned long arg = 0;
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
    void* p;
    size_t n;
    if (BufferOf(info[2], &p, &n)) {
      // SAFETY: for a request that encodes a direction the kernel reads and/or writes _IOC_SIZE(req)
      // bytes at the pointer: the buffer must hold them (a larger one is fine: variable-length structs)
      if (_IOC_DIR(req) != _IOC_NONE && n < _IOC_SIZE(req)) THROW_TYPE(env, "ioctl: buffer smaller than the request's size", env.Null());
      arg = reinterpret_cast<unsigned long>(p);
    } else if (info[2].IsNumber() || info[2].IsBigInt())
      arg = static_cast<unsigned long>(ArgU64(info[2]));
    else
      THROW_TYPE(env, "ioctl: arg must be a number, bigint or buffer", env.Null());
  }
  // EINTR is retried (a profiler's or a kick's signal must not fail set-up ioctls) unless the caller
  // wants to see it: KVM_RUN returns EINTR on purpose when its thread is kicked.
  bool interruptible = info.Length() > 4 && info[4].ToBoolean();
  int r;
  do {
    r = ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR && !interruptible);
  if (r < 0) {
    std::string name = info.Length() > 3 && info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : "ioctl";
    THROW_ERRNO(env, name.c_str(), env.Null());
  }
  return Napi::Number::New(env, r);
}

// read/write(fd, buffer) -> bytes, or -errno for EAGAIN/EINTR (normal on non-blocking fds), throws otherwise.
template <typename Op>
Napi::Value Transfer(const Napi::CallbackInfo& info, const char* name, Op op) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[1], &p, &n)) THROW_TYPE(env, "read/write: buffer expected", env.Null());
  ssize_t r = op(ArgInt(info, 0), p, n);
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return Napi::Number::New(env, -errno);
    THROW_ERRNO(env, name, env.Null());
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value Read(const Napi::CallbackInfo& info) { return Transfer(info, "read", [](int fd, void* p, size_t n) { return read(fd, p, n); }); }
Napi::Value Write(const Napi::CallbackInfo& info) { return Transfer(info, "write", [](int fd, void* p, size_t n) { return write(fd, p, n); }); }

// readv/writev(fd, iov: Float64Array of [buffer index, offset, length] triples, count, buf0[, buf1])
// -> bytes, or -errno for any failure (its meaning is the caller's). Packets go between the kernel and
// guest memory (or a scratch buffer) with no copy here; every triple is bounds-checked against its buffer.
constexpr int kMaxIov = 1024;

// The table is info[first], the count info[first + 1], the buffers info[first + 2] and info[first + 3].
bool BuildIovFrom(const Napi::CallbackInfo& info, size_t first, struct iovec* iov, int* n) {
  void* tp;
  size_t tl;
  // (a Float64Array: its data is aligned for double)
  if (!ToV8(info[first])->IsFloat64Array() || !BufferOf(info[first], &tp, &tl)) return false;
  const double* t = static_cast<const double*>(tp);
  int count = ArgInt(info, first + 1);
  if (count < 0 || count > kMaxIov || static_cast<size_t>(count) * 3 * sizeof(double) > tl) return false;
  void* base[2] = {nullptr, nullptr};
  size_t blen[2] = {0, 0};
  for (size_t b = 0; b < 2; b++)
    if (info.Length() > first + 2 + b && !info[first + 2 + b].IsUndefined()) BufferOf(info[first + 2 + b], &base[b], &blen[b]);
  for (int i = 0; i < count; i++) {
    double which = t[3 * i], off = t[3 * i + 1], len = t[3 * i + 2];
    // every test is written to fail on NaN (a NaN compares false), so only numbers in range are cast
    if (!(which == 0 || which == 1)) return false;
    int b = static_cast<int>(which);
    if (!base[b] || !(off >= 0 && len >= 0 && off + len <= static_cast<double>(blen[b]))) return false;
    // SAFETY: 0 <= off, 0 <= len and off + len <= blen[b], and casting truncates toward zero: the
    // range [base + off, base + off + len) lies inside buffer b
    iov[i].iov_base = static_cast<uint8_t*>(base[b]) + static_cast<size_t>(off);
    iov[i].iov_len = static_cast<size_t>(len);
  }
  *n = count;
  return true;
}

bool BuildIov(const Napi::CallbackInfo& info, struct iovec* iov, int* n) { return BuildIovFrom(info, 1, iov, n); }

Napi::Value Readv(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  struct iovec iov[kMaxIov];
  int n;
  if (!BuildIov(info, iov, &n)) THROW_TYPE(env, "readv: bad iovec table", env.Null());
  ssize_t r = readv(ArgInt(info, 0), iov, n);
  return Napi::Number::New(env, r < 0 ? -static_cast<double>(errno) : static_cast<double>(r));
}

Napi::Value Writev(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  struct iovec iov[kMaxIov];
  int n;
  if (!BuildIov(info, iov, &n)) THROW_TYPE(env, "writev: bad iovec table", env.Null());
  ssize_t r = writev(ArgInt(info, 0), iov, n);
  return Napi::Number::New(env, r < 0 ? -static_cast<double>(errno) : static_cast<double>(r));
}

Napi::Value Socket(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = socket(ArgInt(info, 0), ArgInt(info, 1) | SOCK_CLOEXEC, ArgInt(info, 2));
  if (fd < 0) THROW_ERRNO(env, "socket", env.Null());
  return Napi::Number::New(env, fd);
}

// { buffer: SharedArrayBuffer over [addr, addr+len), address }: unmapped when the last reference dies.
Napi::Object SharedMapping(Napi::Env env, void* addr, size_t len) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      addr, len, [](void* data, size_t length, void*) { munmap(data, length); }, nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  // napi_value is a v8::Local's slot pointer in Node (v8impl::JsValueFromV8LocalValue does the same cast).
  napi_value raw = reinterpret_cast<napi_value>(*v8::Local<v8::Value>(sab));
  auto out = Napi::Object::New(env);
  out.Set("buffer", Napi::Value(env, raw));
  out.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(addr))));
  return out;
}

// plainView(sab) -> ArrayBuffer: a non-shared ArrayBuffer over the same bytes as the SharedArrayBuffer
// sab (this thread's own object). V8 copies into or out of a shared buffer byte by byte (relaxed
// atomics); over a plain one, TypedArray.prototype.set is a memcpy. The new buffer holds a reference to
// sab's backing store, so the memory it points at stays mapped as long as either lives (and if the
// buffer is detached, the reference goes with its backing store and is dropped with it).
Napi::Value PlainView(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  v8::Local<v8::Value> v = ToV8(info[0]);
  if (!v->IsSharedArrayBuffer()) THROW_TYPE(env, "plainView: SharedArrayBuffer expected", env.Null());
  auto* keep = new std::shared_ptr<v8::BackingStore>(v.As<v8::SharedArrayBuffer>()->GetBackingStore());
  // SAFETY: [Data(), Data() + ByteLength()) is the shared buffer's memory, kept alive by `keep` until
  // V8 frees this backing store (the deleter).
  std::unique_ptr<v8::BackingStore> store = v8::ArrayBuffer::NewBackingStore(
      (*keep)->Data(), (*keep)->ByteLength(),
      [](void*, size_t, void* k) { delete static_cast<std::shared_ptr<v8::BackingStore>*>(k); }, keep);
  v8::Local<v8::ArrayBuffer> ab = v8::ArrayBuffer::New(v8::Isolate::GetCurrent(), std::move(store));
  return Napi::Value(env, reinterpret_cast<napi_value>(*v8::Local<v8::Value>(ab)));
}

bool UnixAddr(const std::string& path, sockaddr_un* sa) {
  if (path.size() >= sizeof(sa->sun_path)) return false;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, path.c_str(), path.size());
  return true;
}

// bindUnix(fd, path), connectUnix(fd, path) -> 0 or -errno (EINPROGRESS, ECONNREFUSED, ENOENT are normal)
Napi::Value BindUnix(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  sockaddr_un sa;
  if (!UnixAddr(info[1].As<Napi::String>(), &sa)) THROW_TYPE(env, "bindUnix: path too long", env.Null());
  if (bind(ArgInt(info, 0), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) THROW_ERRNO(env, "bind", env.Null());
  return env.Undefined();
}

Napi::Value ConnectUnix(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  sockaddr_un sa;
  if (!UnixAddr(info[1].As<Napi::String>(), &sa)) THROW_TYPE(env, "connectUnix: path too long", env.Null());
  if (connect(ArgInt(info, 0), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, 0);
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (listen(ArgInt(info, 0), ArgInt(info, 1)) < 0) THROW_ERRNO(env, "listen", env.Null());
  return env.Undefined();
}

// accept(fd) -> new fd, or -errno (EAGAIN on a non-blocking socket with nobody waiting)
Napi::Value Accept(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = accept4(ArgInt(info, 0), nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, fd);
}

// recvmsg(fd, buffer, fdsOut: Int32Array) -> bytes (0 = peer closed) or -errno; received descriptors
// go to fdsOut, -1 terminated (extras beyond its length are closed)
Napi::Value Recvmsg(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  void* fp;
  size_t fl;
  if (!BufferOf(info[1], &p, &n) || !BufferOf(info[2], &fp, &fl)) THROW_TYPE(env, "recvmsg: buffers expected", env.Null());
  int32_t* fds = static_cast<int32_t*>(fp);
  size_t maxfds = fl / sizeof(int32_t);
  iovec iov{p, n};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 32)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  ssize_t r = recvmsg(ArgInt(info, 0), &msg, MSG_CMSG_CLOEXEC);
  if (r < 0) return Napi::Number::New(env, -errno);
  size_t got = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int* in = reinterpret_cast<int*>(CMSG_DATA(c));
    for (size_t i = 0; i < k; i++) {
      if (got + 1 < maxfds) fds[got++] = in[i];
      else close(in[i]);
    }
  }
  if (got < maxfds) fds[got] = -1;
  return Napi::Number::New(env, static_cast<double>(r));
}

// sendmsg(fd, buffer, fds?: number[]) -> bytes or -errno
Napi::Value Sendmsg(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[1], &p, &n)) THROW_TYPE(env, "sendmsg: buffer expected", env.Null());
  iovec iov{p, n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 32)];
  if (info.Length() > 2 && info[2].IsArray()) {
    auto arr = info[2].As<Napi::Array>();
    uint32_t k = arr.Length();
    if (k > 32) THROW_TYPE(env, "sendmsg: at most 32 descriptors", env.Null());
    if (k) {
      msg.msg_control = ctl;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * k);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * k);
      for (uint32_t i = 0; i < k; i++) reinterpret_cast<int*>(CMSG_DATA(c))[i] = arr.Get(i).As<Napi::Number>().Int32Value();
    }
  }
  ssize_t r = sendmsg(ArgInt(info, 0), &msg, MSG_NOSIGNAL);
  if (r < 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, static_cast<double>(r));
}

// reserveShared(length) -> { buffer: SharedArrayBuffer, address } over an inaccessible reservation:
// regions of other processes' memory are then mapped into it with mmapFixed, so that memory shared by a
// vhost-user frontend is one buffer for the dataplane. Unmapped parts must never be touched.
Napi::Value ReserveShared(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  size_t len = static_cast<size_t>(ArgU64(info[0]));
  void* addr = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (addr == MAP_FAILED) THROW_ERRNO(env, "mmap(reserve)", env.Null());
  return SharedMapping(env, addr, len);
}

// mmapFixed(address, length, fd, offset): map fd shared, read/write, exactly at address
Napi::Value MmapFixed(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* addr = reinterpret_cast<void*>(static_cast<uintptr_t>(ArgU64(info[0])));
  void* r = mmap(addr, static_cast<size_t>(ArgU64(info[1])), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, ArgInt(info, 2), static_cast<off_t>(ArgU64(info[3])));
  if (r == MAP_FAILED) THROW_ERRNO(env, "mmap(MAP_FIXED)", env.Null());
  return env.Undefined();
}

// fileSize(fd) -> st_size (a mapping past the end of a file faults on access, so callers check)
Napi::Value FileSize(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  struct stat st;
  if (fstat(ArgInt(info, 0), &st) < 0) THROW_ERRNO(env, "fstat", env.Null());
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

// lseek(fd, offset, whence) -> the new offset, or -errno (SEEK_DATA/SEEK_HOLE past the last data: -ENXIO)
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  off_t r = lseek(ArgInt(info, 0), static_cast<off_t>(ArgU64(info[1])), ArgInt(info, 2));
  if (r < 0) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  std::string name = info[0].As<Napi::String>();
  int fd = memfd_create(name.c_str(), static_cast<unsigned>(ArgInt(info, 1)) | MFD_CLOEXEC);
  if (fd < 0) THROW_ERRNO(env, "memfd_create", env.Null());
  return Napi::Number::New(env, fd);
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (ftruncate(ArgInt(info, 0), static_cast<off_t>(ArgU64(info[1]))) < 0) THROW_ERRNO(env, "ftruncate", env.Null());
  return env.Undefined();
}

struct Mapping {
  void* addr;
  size_t len;
};

// mmapShared(fd, length[, offset[, private]]) -> { buffer: SharedArrayBuffer, address: bigint }
// MAP_SHARED (or, with private true, MAP_PRIVATE: copy-on-write, still one address space for every
// thread of the process) over fd from offset (a multiple of the page size; mmap checks); the mapping
// is removed when the last SharedArrayBuffer referring to it (in any thread) dies.
Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = ArgInt(info, 0);
  size_t len = static_cast<size_t>(ArgU64(info[1]));
  off_t offset = info.Length() > 2 && !info[2].IsUndefined() ? static_cast<off_t>(ArgU64(info[2])) : 0;
  bool priv = info.Length() > 3 && info[3].ToBoolean().Value();
  void* addr = mmap(nullptr, len, PROT_READ | PROT_WRITE, priv ? MAP_PRIVATE : MAP_SHARED, fd, offset);
  if (addr == MAP_FAILED) THROW_ERRNO(env, "mmap", env.Null());
  return SharedMapping(env, addr, len);
}

// mmap(fd, length, prot, flags, offset) -> ArrayBuffer (thread-local view; unmapped when collected).
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  size_t len = static_cast<size_t>(ArgU64(info[1]));
  void* addr = mmap(nullptr, len, ArgInt(info, 2), ArgInt(info, 3), ArgInt(info, 0), static_cast<off_t>(ArgU64(info[4])));
  if (addr == MAP_FAILED) THROW_ERRNO(env, "mmap", env.Null());
  auto* m = new Mapping{addr, len};
  return Napi::ArrayBuffer::New(env, addr, len, [](Napi::Env, void*, Mapping* mp) {
    munmap(mp->addr, mp->len);
    delete mp;
  }, m);
}

// remapAnonymous(address, length): mmap anonymous zero pages over an existing mapping (MAP_FIXED), so the
// file behind it (guest memory's memfd) is released now while JavaScript views of it stay valid.
Napi::Value RemapAnonymous(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* addr = reinterpret_cast<void*>(static_cast<uintptr_t>(ArgU64(info[0])));
  size_t len = static_cast<size_t>(ArgU64(info[1]));
  void* r = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) THROW_ERRNO(env, "mmap(MAP_FIXED)", env.Null());
  return env.Undefined();
}

Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[0], &p, &n)) THROW_TYPE(env, "addressOf: buffer expected", env.Null());
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = eventfd(static_cast<unsigned>(ArgInt(info, 0)), ArgInt(info, 1) | EFD_CLOEXEC);
  if (fd < 0) THROW_ERRNO(env, "eventfd", env.Null());
  return Napi::Number::New(env, fd);
}

Napi::Value EpollCreate(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) THROW_ERRNO(env, "epoll_create1", env.Null());
  return Napi::Number::New(env, fd);
}

// epollCtl(epfd, op, fd, events, data:number)
Napi::Value EpollCtl(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  epoll_event ev{};
  ev.events = static_cast<uint32_t>(info[3].As<Napi::Number>().Uint32Value());
  ev.data.u64 = ArgU64(info[4]);
  if (epoll_ctl(ArgInt(info, 0), ArgInt(info, 1), ArgInt(info, 2), &ev) < 0) THROW_ERRNO(env, "epoll_ctl", env.Null());
  return env.Undefined();
}

// epollWait(epfd, out: Uint32Array (3 words per event: events, data lo, data hi), timeoutMs) -> count (0 on EINTR)
Napi::Value EpollWait(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[1], &p, &n)) THROW_TYPE(env, "epollWait: buffer expected", env.Null());
  int max = static_cast<int>(n / sizeof(epoll_event));
  if (max < 1) THROW_TYPE(env, "epollWait: buffer too small", env.Null());
  int r = epoll_wait(ArgInt(info, 0), static_cast<epoll_event*>(p), max, ArgInt(info, 2));
  if (r < 0) {
    if (errno == EINTR) return Napi::Number::New(env, 0);
    THROW_ERRNO(env, "epoll_wait", env.Null());
  }
  return Napi::Number::New(env, r);
}

Napi::Value ThreadSelf(const Napi::CallbackInfo& info) {
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(pthread_self()));
}

Napi::Value ThreadKill(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int err = pthread_kill(static_cast<pthread_t>(ArgU64(info[0])), ArgInt(info, 1));
  if (err != 0) {
    errno = err;
    THROW_ERRNO(env, "pthread_kill", env.Null());
  }
  return env.Undefined();
}

void NoopHandler(int) {}

// signalNoop(signo): a handler that does nothing and does not restart system calls, so that
// pthread_kill() makes a thread blocked in KVM_RUN return EINTR.
Napi::Value SignalNoop(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  struct sigaction sa {};
  sa.sa_handler = NoopHandler;
  sigemptyset(&sa.sa_mask);
  if (sigaction(ArgInt(info, 0), &sa, nullptr) < 0) THROW_ERRNO(env, "sigaction", env.Null());
  return env.Undefined();
}

// unblockSignal(signo): make sure the calling thread can receive the kick signal.
Napi::Value UnblockSignal(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, ArgInt(info, 0));
  int err = pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  if (err != 0) {
    errno = err;
    THROW_ERRNO(env, "pthread_sigmask", env.Null());
  }
  return env.Undefined();
}

// copy(dst, dstOffset, src, srcOffset, length): memmove between any two buffers (guest memory, a
// UMEM, a driver's own), bounds-checked. A packet copy without making a view per segment.
Napi::Value Copy(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void *d, *s;
  size_t dn, sn;
  if (!BufferOf(info[0], &d, &dn) || !BufferOf(info[2], &s, &sn)) THROW_TYPE(env, "copy: buffers expected", env.Null());
  double doff = info[1].As<Napi::Number>().DoubleValue(), soff = info[3].As<Napi::Number>().DoubleValue(), len = info[4].As<Napi::Number>().DoubleValue();
  if (!(doff >= 0 && soff >= 0 && len >= 0 && doff + len <= dn && soff + len <= sn)) THROW_TYPE(env, "copy: range outside a buffer", env.Null());
  memmove(static_cast<uint8_t*>(d) + static_cast<size_t>(doff), static_cast<uint8_t*>(s) + static_cast<size_t>(soff), static_cast<size_t>(len));
  return env.Undefined();
}

// copyv(list: Float64Array of [dst buffer, dst offset, src buffer, src offset, length] quintuples, count,
// buf0[, buf1]): `count` memmoves in one call (buffer index 0 = buf0, 1 = buf1), each range checked
// inside its buffer; throws at the first entry that is not (the entries before it were copied). A batch
// of packet copies for the price of one addon call: per copy, a typed-array copy costs the making of a
// view and TypedArray.prototype.set's checks (30-40 ns for 64 bytes), this a memmove.
Napi::Value Copyv(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* lp;
  size_t ll;
  if (!BufferOf(info[0], &lp, &ll)) THROW_TYPE(env, "copyv: list must be a Float64Array", env.Null());
  int count = ArgInt(info, 1);
  if (count < 0 || static_cast<size_t>(count) * 5 * sizeof(double) > ll) THROW_TYPE(env, "copyv: count beyond the list", env.Null());
  void* base[2] = {nullptr, nullptr};
  size_t blen[2] = {0, 0};
  if (!BufferOf(info[2], &base[0], &blen[0])) THROW_TYPE(env, "copyv: buffers expected", env.Null());
  if (info.Length() > 3 && !info[3].IsUndefined() && !BufferOf(info[3], &base[1], &blen[1])) THROW_TYPE(env, "copyv: buffers expected", env.Null());
  const double* e = static_cast<const double*>(lp);
  for (int i = 0; i < count; i++, e += 5) {
    double db = e[0], doff = e[1], sb = e[2], soff = e[3], len = e[4];
    if (!((db == 0 || db == 1) && (sb == 0 || sb == 1))) THROW_TYPE(env, "copyv: buffer index not 0 or 1", env.Null());
    int d = static_cast<int>(db), s = static_cast<int>(sb);
    if (!base[d] || !base[s] || !(doff >= 0 && soff >= 0 && len >= 0 && doff + len <= static_cast<double>(blen[d]) && soff + len <= static_cast<double>(blen[s])))
      THROW_TYPE(env, "copyv: range outside a buffer", env.Null());
    // SAFETY: both ranges were just checked to lie inside their buffers, which the caller's arguments keep alive.
    memmove(static_cast<uint8_t*>(base[d]) + static_cast<size_t>(doff), static_cast<uint8_t*>(base[s]) + static_cast<size_t>(soff), static_cast<size_t>(len));
  }
  return env.Undefined();
}

// ---- AF_XDP and BPF: the attribute and option structs are built in TypeScript (src/drivers/af-xdp/abi.ts)

// bpf(cmd, attr): the bpf() system call over a caller-built union bpf_attr. Result (an fd or 0) or -errno.
Napi::Value Bpf(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[1], &p, &n)) THROW_TYPE(env, "bpf: attr must be a buffer", env.Null());
  long r = syscall(__NR_bpf, ArgInt(info, 0), p, n);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// setsockopt(fd, level, name, value buffer): 0 or -errno
Napi::Value Setsockopt(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[3], &p, &n)) THROW_TYPE(env, "setsockopt: value must be a buffer", env.Null());
  int r = setsockopt(ArgInt(info, 0), ArgInt(info, 1), ArgInt(info, 2), p, static_cast<socklen_t>(n));
  return Napi::Number::New(env, r < 0 ? -errno : 0);
}

// getsockopt(fd, level, name, out buffer): the option's length, or -errno
Napi::Value Getsockopt(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[3], &p, &n)) THROW_TYPE(env, "getsockopt: out must be a buffer", env.Null());
  socklen_t len = static_cast<socklen_t>(n);
  int r = getsockopt(ArgInt(info, 0), ArgInt(info, 1), ArgInt(info, 2), p, &len);
  return Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(len));
}

// bindRaw(fd, sockaddr buffer): bind with a caller-built address (sockaddr_xdp, sockaddr_ll). 0 or -errno
Napi::Value BindRaw(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[1], &p, &n)) THROW_TYPE(env, "bindRaw: address must be a buffer", env.Null());
  int r = bind(ArgInt(info, 0), static_cast<sockaddr*>(p), static_cast<socklen_t>(n));
  return Napi::Number::New(env, r < 0 ? -errno : 0);
}

// kick(fd, flags): sendto(fd, NULL, 0, flags) — the AF_XDP transmit wake-up. Bytes or -errno.
Napi::Value Kick(const Napi::CallbackInfo& info) {
  ssize_t r = sendto(ArgInt(info, 0), nullptr, 0, ArgInt(info, 1), nullptr, 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : static_cast<double>(r));
}

// poll(fd, events, timeoutMs): revents, 0 on timeout, or -errno
Napi::Value Poll(const Napi::CallbackInfo& info) {
  pollfd p{ArgInt(info, 0), static_cast<short>(ArgInt(info, 1)), 0};
  int r = poll(&p, 1, ArgInt(info, 2));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : (r == 0 ? 0 : p.revents));
}

// ---- fd readiness on this thread's event loop (libuv poll handles)

// watchReadable(fd, callback) -> id: libuv watches fd on the calling thread's loop and calls
// callback() while it is readable (level-triggered: the callback drains the fd). The handle is unref'd:
// a watch alone does not keep the process alive. unwatch(id) -> whether the id was being watched.
struct FdWatch {
  uv_poll_t poll;
  Napi::FunctionReference callback;
};
thread_local std::unordered_map<int, FdWatch*> watches;
thread_local int nextWatch = 1;

void OnReadable(uv_poll_t* handle, int, int) {
  auto* w = static_cast<FdWatch*>(handle->data);
  Napi::Env env = w->callback.Env();
  Napi::HandleScope scope(env);
  // SAFETY: the callback (TypeScript) catches what it throws; MakeCallback runs microtasks after it
  w->callback.MakeCallback(env.Global(), {});
}

Napi::Value WatchReadable(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (!info[1].IsFunction()) THROW_TYPE(env, "watchReadable: callback must be a function", env.Null());
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) THROW_TYPE(env, "watchReadable: no event loop", env.Null());
  auto* w = new FdWatch();
  w->poll.data = w;
  int r = uv_poll_init(loop, &w->poll, ArgInt(info, 0));
  if (r != 0) {
    delete w;
    ErrnoError(env, "uv_poll_init", -r).ThrowAsJavaScriptException();
    return env.Null();
  }
  // (uv_poll_init overwrote data)
  w->poll.data = w;
  r = uv_poll_start(&w->poll, UV_READABLE, OnReadable);
  if (r != 0) {
    // an initialised handle is freed only once closed
    uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), [](uv_handle_t* h) { delete static_cast<FdWatch*>(h->data); });
    ErrnoError(env, "uv_poll_start", -r).ThrowAsJavaScriptException();
    return env.Null();
  }
  uv_unref(reinterpret_cast<uv_handle_t*>(&w->poll));
  w->callback = Napi::Persistent(info[1].As<Napi::Function>());
  int id = nextWatch++;
  watches[id] = w;
  return Napi::Number::New(env, id);
}

Napi::Value Unwatch(const Napi::CallbackInfo& info) {
  auto it = watches.find(ArgInt(info, 0));
  if (it == watches.end()) return Napi::Boolean::New(info.Env(), false);
  FdWatch* w = it->second;
  watches.erase(it);
  uv_poll_stop(&w->poll);
  w->callback.Reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), [](uv_handle_t* h) { delete static_cast<FdWatch*>(h->data); });
  return Napi::Boolean::New(info.Env(), true);
}

// ---- io_uring: the rings are mapped with mmap() and filled in TypeScript (src/drivers/tap/uring.ts)

// ioUringSetup(entries, params: 120-byte struct io_uring_params, flags set by the caller; the kernel
// fills in the rest) -> ring fd (close-on-exec, as io_uring makes them) or -errno (ENOSYS, EPERM and
// EINVAL are how a kernel refuses)
Napi::Value IoUringSetup(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[1], &p, &n) || n < 120) THROW_TYPE(env, "ioUringSetup: params must be a 120-byte buffer", env.Null());
  long r = syscall(__NR_io_uring_setup, static_cast<unsigned>(ArgInt(info, 0)), p);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// ioUringEnter(fd, toSubmit, minComplete, flags) -> SQEs consumed, or -errno
Napi::Value IoUringEnter(const Napi::CallbackInfo& info) {
  long r = syscall(__NR_io_uring_enter, ArgInt(info, 0), static_cast<unsigned>(ArgInt(info, 1)), static_cast<unsigned>(ArgInt(info, 2)),
                   static_cast<unsigned>(ArgInt(info, 3)), nullptr, 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : r);
}

// ioUringRegister(fd, opcode, arg buffer, nrArgs) -> result or -errno (the caller builds arg as the
// opcode's struct or array: IORING_REGISTER_FILES takes nrArgs int32 fds)
Napi::Value IoUringRegister(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* p;
  size_t n;
  if (!BufferOf(info[2], &p, &n)) THROW_TYPE(env, "ioUringRegister: arg must be a buffer", env.Null());
  long r = syscall(__NR_io_uring_register, ArgInt(info, 0), static_cast<unsigned>(ArgInt(info, 1)), p, static_cast<unsigned>(ArgInt(info, 3)));
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// fillIovecs(out, at, iov: Float64Array of [buffer index, offset, length] triples, count, buf0[, buf1])
// -> count, or -1 for a triple outside its buffer or a table too small: writes `count` struct iovec
// with real addresses at out[at..], for system calls the kernel runs later (io_uring's READV/WRITEV).
// The caller keeps out and the buffers alive until those calls complete.
Napi::Value FillIovecs(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  void* op;
  size_t ol;
  if (!BufferOf(info[0], &op, &ol) || reinterpret_cast<uintptr_t>(op) % alignof(struct iovec) != 0) THROW_TYPE(env, "fillIovecs: out must be an aligned buffer", env.Null());
  double at = info[1].As<Napi::Number>().DoubleValue();
  int count = ArgInt(info, 3);
  if (!(at >= 0 && count >= 0 && count <= kMaxIov && (at + count) * sizeof(struct iovec) <= static_cast<double>(ol))) return Napi::Number::New(env, -1);
  int n;
  // SAFETY: at + count <= ol / sizeof(struct iovec), checked above, and out is aligned for struct iovec:
  // BuildIovFrom writes at most count entries (it refuses a different count)
  if (!BuildIovFrom(info, 2, static_cast<struct iovec*>(op) + static_cast<size_t>(at), &n) || n != count) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, n);
}

Napi::Value SigRtMin(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), SIGRTMIN); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl));
  exports.Set("read", Napi::Function::New(env, Read));
  exports.Set("write", Napi::Function::New(env, Write));
  exports.Set("readv", Napi::Function::New(env, Readv));
  exports.Set("writev", Napi::Function::New(env, Writev));
  exports.Set("socket", Napi::Function::New(env, Socket));
  exports.Set("bindUnix", Napi::Function::New(env, BindUnix));
  exports.Set("connectUnix", Napi::Function::New(env, ConnectUnix));
  exports.Set("listen", Napi::Function::New(env, Listen));
  exports.Set("accept", Napi::Function::New(env, Accept));
  exports.Set("recvmsg", Napi::Function::New(env, Recvmsg));
  exports.Set("sendmsg", Napi::Function::New(env, Sendmsg));
  exports.Set("reserveShared", Napi::Function::New(env, ReserveShared));
  exports.Set("mmapFixed", Napi::Function::New(env, MmapFixed));
  exports.Set("fileSize", Napi::Function::New(env, FileSize));
  exports.Set("lseek", Napi::Function::New(env, Lseek));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate));
  exports.Set("mmapShared", Napi::Function::New(env, MmapShared));
  exports.Set("plainView", Napi::Function::New(env, PlainView));
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("remapAnonymous", Napi::Function::New(env, RemapAnonymous));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd));
  exports.Set("epollCreate", Napi::Function::New(env, EpollCreate));
  exports.Set("epollCtl", Napi::Function::New(env, EpollCtl));
  exports.Set("epollWait", Napi::Function::New(env, EpollWait));
  exports.Set("threadSelf", Napi::Function::New(env, ThreadSelf));
  exports.Set("threadKill", Napi::Function::New(env, ThreadKill));
  exports.Set("signalNoop", Napi::Function::New(env, SignalNoop));
  exports.Set("unblockSignal", Napi::Function::New(env, UnblockSignal));
  exports.Set("ioUringSetup", Napi::Function::New(env, IoUringSetup));
  exports.Set("ioUringEnter", Napi::Function::New(env, IoUringEnter));
  exports.Set("ioUringRegister", Napi::Function::New(env, IoUringRegister));
  exports.Set("fillIovecs", Napi::Function::New(env, FillIovecs));
  exports.Set("sigRtMin", Napi::Function::New(env, SigRtMin));
  exports.Set("copy", Napi::Function::New(env, Copy));
  exports.Set("copyv", Napi::Function::New(env, Copyv));
  exports.Set("bpf", Napi::Function::New(env, Bpf));
  exports.Set("setsockopt", Napi::Function::New(env, Setsockopt));
  exports.Set("getsockopt", Napi::Function::New(env, Getsockopt));
  exports.Set("bindRaw", Napi::Function::New(env, BindRaw));
  exports.Set("kick", Napi::Function::New(env, Kick));
  exports.Set("poll", Napi::Function::New(env, Poll));
  exports.Set("watchReadable", Napi::Function::New(env, WatchReadable));
  exports.Set("unwatch", Napi::Function::New(env, Unwatch));
  return exports;
}

}  // namespace

NODE_API_MODULE(tsvmm_native, Init)
