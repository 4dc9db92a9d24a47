# dlopen/dlsym, for the C-only modules that find C functions inside another
# extension module already loaded (eightys/lua_call.pyx: LuaJIT's in lupa's;
# eightys/protocols/llhttp.pyx: llhttp's in httptools').

cdef extern from "dlfcn.h" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    int dlclose(void *handle)
    int RTLD_NOW
    int RTLD_NOLOAD
