package pkcs11

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>

// In a statically linked binary, the libc.so.6 that a dlopened module brings sets up
// its per-thread ctype tables only on the thread that loaded it; isspace() & co. in the
// module then crash on any other thread. __ctype_init sets them for the calling thread
// (harmless in a dynamic binary, where it is the one libc).
static __thread int ihsm_thread_ready;
static void ihsm_thread_init(void) {
	if (ihsm_thread_ready) return;
	// Before any module is loaded there is no second libc yet: try again next time.
	void *h = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	if (!h) return;
	void (*f)(void) = (void (*)(void))dlsym(h, "__ctype_init");
	if (f) f();
	dlclose(h);
	ihsm_thread_ready = 1;
}
*/
import "C"

import "runtime"

// pinThread keeps the goroutine on its OS thread for a sequence of module calls and
// makes that thread's C library state usable by the module. Call the result when done.
func pinThread() func() {
	runtime.LockOSThread()
	C.ihsm_thread_init()
	return runtime.UnlockOSThread
}
