/* A streaming loader for PyTorch memory snapshot pickles.
 *
 * A minimal pickle VM for plain data (protocols 2 to 5) that never builds the
 * trace-entry dicts: entries appended to the per-device lists of the top-level
 * dict's 'device_traces' are turned into columns as they are read, and the
 * frames lists of those entries are interned by the identity of their frame
 * objects. Everything else (segments, blocks, frame dicts, annotations) is
 * built as ordinary Python objects.
 *
 * Any opcode outside plain data (GLOBAL, REDUCE, BUILD, ...) or any shape this
 * loader does not handle raises Unsupported: the caller then falls back to the
 * restricted pure-Python unpickler. Truncated or malformed input raises
 * Malformed. Every read is bounds-checked; nothing in the file is executed.
 *
 * Values on the VM stack are tagged: a Python object, an unboxed int64, a
 * trace entry under construction, or a frames-list builder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>

static PyObject *Unsupported;
static PyObject *Malformed;
static PyObject *Limit; /* args (kind, detail): kind is 'bytes', 'memory', 'depth' or 'memo' */

/* The memory estimate shared with memprof/safe_pickle.py's scan: per container built, per item
 * added to one, per string (plus its length), per value on the stack, per memo slot. */
#define C_CONTAINER 64
#define C_ITEM 8
#define C_STR 48
#define C_SLOT 16
#define C_MEMO 8

enum { V_OBJ = 0, V_INT, V_ENTRY, V_STACKB, V_RELEASED, V_EMPTY };

typedef struct {
    int kind;
    int depth; /* containers: 1 + the depth of the deepest item added so far */
    union {
        PyObject *o;
        long long i;
        Py_ssize_t idx;
    } u;
} Val;

enum { F_ACTION = 0, F_ADDR, F_SIZE, F_STREAM, F_TIME, F_DFREE, F_FRAMES, F_UM, NFIELDS, F_OTHER = NFIELDS };
static const char *FIELD_NAMES[NFIELDS] = {"action", "addr", "size", "stream", "time_us", "device_free", "frames", "user_metadata"};
/* int fields F_ADDR..F_DFREE are stored in ints[f - F_ADDR] */
static const long long INT_DEFAULTS[5] = {-1, 0, 0, 0, -1};

typedef struct {
    int8_t action;
    long long ints[5];
    int32_t stack;
    int32_t um;
    uint32_t present;
    Py_ssize_t trace;
} Entry;

/* A frames list being read. 16 bytes: there is one per allocation in a torch snapshot.
 * While open, items[0:n] are owned references; once done (cap == -1), n is its stack id. */
typedef struct {
    PyObject **items;
    int32_t n;
    int32_t cap;
} Builder;
#define B_DONE(b) ((b)->cap == -1)

/* Memo slots are tagged words (8 bytes; a snapshot memoises every entry and frames list):
 * 0 empty, 1 a released trace entry, (idx << 2) | 2 a frames-list builder, else a PyObject* (owned). */
typedef uintptr_t Slot;
#define S_EMPTY ((Slot)0)
#define S_RELEASED ((Slot)1)
#define S_IS_BUILDER(x) (((x)&3) == 2)
#define S_BUILDER(i) ((((Slot)(i)) << 2) | 2)
#define S_IS_OBJ(x) ((x) > 1 && ((x)&3) == 0)

typedef struct {
    PyObject *list; /* strong reference: the (empty) list object standing for this device's trace */
    Py_ssize_t n, cap;
    int8_t *action;
    long long *ints[5];
    int32_t *stack;
    int32_t *um;
    /* The columns live in bytes objects grown in place (_PyBytes_Resize) and handed to Python as
     * they are: no copy of hundreds of MB at the end. action, the 5 ints, stack, um. */
    PyObject *col[8];
    Py_ssize_t present[NFIELDS];
    int time_first;
    PyObject *unknown; /* set of unknown action names */
    int placed;
} Trace;

#define NCACHE 32
#define CHUNK (1 << 20)
#define MAX_TRACES 4096

typedef struct {
    PyObject *file;
    char *buf;
    Py_ssize_t pos, len, cap;
    int eof;

    Val *stack;
    Py_ssize_t sp, scap;
    Py_ssize_t *marks;
    Py_ssize_t nm, mcap;
    Slot *memo;
    uint16_t *memo_depth;
    Py_ssize_t memolen;
    Py_ssize_t base;      /* absolute offset of buf[0] in the stream */
    long long frame_end;  /* absolute end of the current FRAME, -1 outside one */
    long long max_bytes;  /* limits (see memprof/limits.py) */
    int max_depth;
    long long cost;       /* the memory estimate, without stack and memo */
    Py_ssize_t memo_count; /* filled slots: MEMOIZE stores at this index, as CPython does */

    Entry *entries;
    Py_ssize_t nent, entcap;
    Py_ssize_t *efree;
    Py_ssize_t nefree, efcap;

    Builder *bld;
    Py_ssize_t nb, bcap;

    Trace *tr;
    Py_ssize_t ntr, trcap;
    PyObject *dt; /* strong: the list that is root['device_traces'] */

    PyObject *stacks; /* list of distinct frames lists */
    Py_hash_t *shash;
    Py_ssize_t shcap;
    int32_t *table;
    Py_ssize_t tcap; /* power of two */

    PyObject *um_index;  /* dict str -> int */
    PyObject *um_values; /* list of str */
    PyObject *action_codes; /* dict str -> int */
    int n_actions;
    PyObject *field_codes; /* dict str -> int */

    PyObject *kcache[NCACHE];
    int kcode[NCACHE];
    int nk;
    PyObject *acache[NCACHE];
    int acode[NCACHE];
    int na;
} VM;

/* ------------------------------------------------------------------------ */
/* errors */

static int unsupported(const char *what) {
    PyErr_SetString(Unsupported, what);
    return -1;
}

static int malformed(const char *what) {
    PyErr_SetString(Malformed, what);
    return -1;
}

static int limit_err(const char *kind, PyObject *detail /* stolen */) {
    if (!detail)
        return -1;
    PyObject *a = Py_BuildValue("(sN)", kind, detail);
    if (a) {
        PyErr_SetObject(Limit, a);
        Py_DECREF(a);
    }
    return -1;
}

/* Turn an unexpected Python error (TypeError for an unhashable key, ...) into Malformed; others
 * (Unsupported, Limit, MemoryError, the reader's own errors such as memprof's LimitError) pass. */
static void normalise_error(void) {
    if (!PyErr_Occurred()) {
        PyErr_SetString(Malformed, "internal error");
        return;
    }
    if (PyErr_ExceptionMatches(Unsupported) || PyErr_ExceptionMatches(Malformed) || PyErr_ExceptionMatches(Limit) ||
        !(PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError) ||
          PyErr_ExceptionMatches(PyExc_KeyError) || PyErr_ExceptionMatches(PyExc_IndexError) ||
          PyErr_ExceptionMatches(PyExc_AttributeError) || PyErr_ExceptionMatches(PyExc_RecursionError) ||
          PyErr_ExceptionMatches(PyExc_SystemError)))
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *s = value ? PyObject_Str(value) : NULL;
    const char *tname = ((PyTypeObject *)type)->tp_name;
    if (s && PyUnicode_Check(s))
        PyErr_Format(Malformed, "%s: %U", tname, s);
    else {
        PyErr_Clear();
        PyErr_Format(Malformed, "%s", tname);
    }
    Py_XDECREF(s);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* ------------------------------------------------------------------------ */
/* input */

static int fill(VM *vm, Py_ssize_t need) {
    Py_ssize_t avail = vm->len - vm->pos;
    if (avail >= need)
        return 0;
    if (vm->pos > 0) {
        if (avail)
            memmove(vm->buf, vm->buf + vm->pos, (size_t)avail);
        vm->base += vm->pos;
        vm->pos = 0;
        vm->len = avail;
    }
    while (vm->len < need) {
        if (vm->eof)
            return malformed("unexpected end of data");
        Py_ssize_t want = need - vm->len;
        if (want < CHUNK)
            want = CHUNK;
        if (want > 16 * CHUNK)
            want = 16 * CHUNK; /* grow with the data actually read, never with a claimed length */
        if (vm->cap - vm->len < want) {
            Py_ssize_t ncap = vm->cap ? vm->cap : CHUNK;
            while (ncap - vm->len < want) {
                if (ncap > PY_SSIZE_T_MAX / 2) {
                    PyErr_NoMemory();
                    return -1;
                }
                ncap *= 2;
            }
            char *nb = PyMem_Realloc(vm->buf, (size_t)ncap);
            if (!nb) {
                PyErr_NoMemory();
                return -1;
            }
            vm->buf = nb;
            vm->cap = ncap;
        }
        PyObject *b = PyObject_CallMethod(vm->file, "read", "n", want);
        if (!b)
            return -1;
        if (!PyBytes_Check(b)) {
            Py_DECREF(b);
            PyErr_SetString(PyExc_TypeError, "file.read() must return bytes");
            return -1;
        }
        Py_ssize_t k = PyBytes_GET_SIZE(b);
        if (k > want) {
            Py_DECREF(b);
            PyErr_SetString(PyExc_ValueError, "file.read() returned too much data");
            return -1;
        }
        if (k == 0)
            vm->eof = 1;
        memcpy(vm->buf + vm->len, PyBytes_AS_STRING(b), (size_t)k);
        vm->len += k;
        Py_DECREF(b);
    }
    return 0;
}

/* Frames as pickle reads them: an opcode and its argument lie within one FRAME, or wholly after
 * its end (then reading goes on outside any frame). Returns -1 for an opcode straddling the end. */
static int frame_check(VM *vm, Py_ssize_t n) {
    long long at = (long long)vm->base + vm->pos;
    if (at == vm->frame_end) {
        vm->frame_end = -1;
        return 0;
    }
    if (at + n > vm->frame_end)
        return malformed("an opcode runs past the end of its FRAME");
    return 0;
}

/* Pointer to n bytes of input, advancing past them; NULL on error. Valid until the next read. */
static inline const char *take(VM *vm, Py_ssize_t n) {
    if (n < 0) {
        malformed("negative length");
        return NULL;
    }
    if (vm->frame_end >= 0 && frame_check(vm, n) < 0)
        return NULL;
    if (vm->len - vm->pos < n && fill(vm, n) < 0)
        return NULL;
    const char *p = vm->buf + vm->pos;
    vm->pos += n;
    return p;
}

static int readline(VM *vm, const char **out, Py_ssize_t *outlen) {
    Py_ssize_t scanned = 0;
    if (vm->frame_end >= 0 && frame_check(vm, 1) < 0)
        return -1;
    for (;;) {
        char *s = vm->buf + vm->pos;
        Py_ssize_t avail = vm->len - vm->pos;
        char *nl = avail > scanned ? memchr(s + scanned, '\n', (size_t)(avail - scanned)) : NULL;
        if (nl) {
            if (vm->frame_end >= 0 && (long long)vm->base + vm->pos + (nl - s) + 1 > vm->frame_end)
                return malformed("an opcode runs past the end of its FRAME");
            *out = s;
            *outlen = nl - s;
            vm->pos += (nl - s) + 1;
            return 0;
        }
        scanned = avail;
        if (fill(vm, avail + 1) < 0)
            return -1;
    }
}

static inline uint64_t le_u(const char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | (unsigned char)p[i];
    return v;
}

/* ------------------------------------------------------------------------ */
/* stack */

static inline int push(VM *vm, Val v) {
    if (vm->sp == vm->scap) {
        Py_ssize_t ncap = vm->scap ? vm->scap + vm->scap / 2 : 256;
        if (vm->cost + (long long)C_SLOT * ncap > vm->max_bytes) { /* the stack itself is memory */
            if (v.kind == V_OBJ)
                Py_DECREF(v.u.o);
            return limit_err("memory", PyUnicode_FromFormat("building it needs more than %lld bytes",
                                                            vm->cost + (long long)C_SLOT * ncap));
        }
        Val *ns = PyMem_Realloc(vm->stack, sizeof(Val) * (size_t)ncap);
        if (!ns) {
            if (v.kind == V_OBJ)
                Py_DECREF(v.u.o);
            PyErr_NoMemory();
            return -1;
        }
        vm->stack = ns;
        vm->scap = ncap;
    }
    vm->stack[vm->sp++] = v;
    return 0;
}

static inline int push_obj(VM *vm, PyObject *o) {
    if (!o)
        return -1;
    Val v;
    v.kind = V_OBJ;
    v.depth = 0;
    v.u.o = o;
    return push(vm, v);
}

/* A new empty container: one level deep, and one container in the memory estimate. */
static inline int push_container(VM *vm, PyObject *o) {
    if (push_obj(vm, o) < 0)
        return -1;
    vm->stack[vm->sp - 1].depth = 1;
    vm->cost += C_CONTAINER;
    return 0;
}

static inline int push_int(VM *vm, long long i) {
    Val v;
    v.kind = V_INT;
    v.depth = 0;
    v.u.i = i;
    return push(vm, v);
}

static int too_deep(VM *vm) {
    (void)vm;
    return limit_err("depth", PyUnicode_FromString("a container"));
}

static int check_memory(VM *vm) {
    long long est = vm->cost + (long long)C_SLOT * vm->sp + (long long)C_MEMO * vm->memo_count;
    if (est > vm->max_bytes)
        return limit_err("memory", PyUnicode_FromFormat("building it needs more than %lld bytes", est));
    return 0;
}

/* Items stack[from:sp] are added to the container at stack[tp]: it becomes one deeper than the deepest. */
static int add_depth(VM *vm, Py_ssize_t tp, Py_ssize_t from) {
    int d = 0;
    for (Py_ssize_t i = from; i < vm->sp; i++)
        if (vm->stack[i].depth > d)
            d = vm->stack[i].depth;
    if (vm->sp > from) {
        if (d + 1 > vm->max_depth)
            return too_deep(vm);
        if (d + 1 > vm->stack[tp].depth)
            vm->stack[tp].depth = d + 1;
        vm->cost += (long long)C_ITEM * (vm->sp - from);
    }
    return 0;
}

static void free_entry(VM *vm, Py_ssize_t idx) {
    if (idx >= 0 && idx < vm->nent && vm->nefree < vm->efcap)
        vm->efree[vm->nefree++] = idx;
}

static void val_clear(VM *vm, Val *v) {
    if (v->kind == V_OBJ)
        Py_XDECREF(v->u.o);
    else if (v->kind == V_ENTRY)
        free_entry(vm, v->u.idx);
    v->kind = V_INT;
    v->u.i = 0;
}

static int pop_mark(VM *vm, Py_ssize_t *m) {
    if (vm->nm == 0)
        return malformed("could not find MARK");
    *m = vm->marks[--vm->nm];
    if (*m > vm->sp)
        return malformed("MARK above the stack");
    return 0;
}

static int trace_index(VM *vm, PyObject *o) {
    if (!PyList_CheckExact(o))
        return -1;
    for (Py_ssize_t i = vm->ntr - 1; i >= 0; i--)
        if (vm->tr[i].list == o)
            return (int)i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* stacks: interning frames lists by the identity of their items */

static Py_hash_t ptr_hash(PyObject **items, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (uint64_t)(uintptr_t)items[i] >> 4;
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    Py_hash_t r = (Py_hash_t)(h & (uint64_t)PY_SSIZE_T_MAX);
    return r;
}

static int table_insert(VM *vm, int32_t sid, Py_hash_t h) {
    size_t mask = (size_t)vm->tcap - 1;
    size_t s = (size_t)h & mask;
    while (vm->table[s] >= 0)
        s = (s + 1) & mask;
    vm->table[s] = sid;
    return 0;
}

/* Intern n frame objects; with steal, the references in items are consumed. Returns the stack id or -2 on error. */
static int32_t intern_items(VM *vm, PyObject **items, Py_ssize_t n, int steal) {
    Py_hash_t h = ptr_hash(items, n);
    Py_ssize_t nst = PyList_GET_SIZE(vm->stacks);
    if (vm->tcap) {
        size_t mask = (size_t)vm->tcap - 1;
        for (size_t s = (size_t)h & mask; vm->table[s] >= 0; s = (s + 1) & mask) {
            int32_t sid = vm->table[s];
            if (vm->shash[sid] != h)
                continue;
            PyObject *lst = PyList_GET_ITEM(vm->stacks, sid);
            if (PyList_GET_SIZE(lst) != n)
                continue;
            PyObject **li = ((PyListObject *)lst)->ob_item;
            Py_ssize_t i = 0;
            while (i < n && li[i] == items[i])
                i++;
            if (i == n) {
                if (steal)
                    for (i = 0; i < n; i++)
                        Py_DECREF(items[i]);
                return sid;
            }
        }
    }
    if (nst >= INT32_MAX - 1) {
        unsupported("too many distinct stacks");
        return -2;
    }
    PyObject *lst = PyList_New(n);
    if (!lst)
        return -2;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!steal)
            Py_INCREF(items[i]);
        PyList_SET_ITEM(lst, i, items[i]);
    }
    if (steal) /* the list owns them now */
        for (Py_ssize_t i = 0; i < n; i++)
            items[i] = NULL;
    int rc = PyList_Append(vm->stacks, lst);
    Py_DECREF(lst);
    if (rc < 0)
        return -2;
    if (nst >= vm->shcap) {
        Py_ssize_t ncap = vm->shcap ? vm->shcap * 2 : 1024;
        Py_hash_t *nh = PyMem_Realloc(vm->shash, sizeof(Py_hash_t) * (size_t)ncap);
        if (!nh) {
            PyErr_NoMemory();
            return -2;
        }
        vm->shash = nh;
        vm->shcap = ncap;
    }
    vm->shash[nst] = h;
    if ((nst + 1) * 2 > vm->tcap) {
        Py_ssize_t ncap = vm->tcap ? vm->tcap * 2 : 2048;
        int32_t *nt = PyMem_Malloc(sizeof(int32_t) * (size_t)ncap);
        if (!nt) {
            PyErr_NoMemory();
            return -2;
        }
        PyMem_Free(vm->table);
        vm->table = nt;
        vm->tcap = ncap;
        memset(vm->table, 0xff, sizeof(int32_t) * (size_t)ncap);
        for (Py_ssize_t i = 0; i < nst; i++)
            table_insert(vm, (int32_t)i, vm->shash[i]);
    }
    table_insert(vm, (int32_t)nst, h);
    return (int32_t)nst;
}

static int32_t builder_finish(VM *vm, Builder *b) {
    if (B_DONE(b))
        return b->n;
    int32_t sid = -1;
    if (b->n > 0) {
        sid = intern_items(vm, b->items, b->n, 1);
        if (sid == -2) {
            /* items the list did not take stay in b (NULLed if taken) and are released at cleanup */
            return -2;
        }
    }
    PyMem_Free(b->items);
    b->items = NULL;
    b->cap = -1;
    b->n = sid;
    return sid;
}

static int builder_append(VM *vm, Builder *b, PyObject *o /* stolen */) {
    if (B_DONE(b)) {
        Py_DECREF(o);
        return unsupported("a frames list grew after it was used");
    }
    if (b->n == b->cap) {
        if (b->cap >= (1 << 29)) {
            Py_DECREF(o);
            return unsupported("a frames list too long");
        }
        int32_t ncap = b->cap ? b->cap * 2 : 16;
        PyObject **ni = PyMem_Realloc(b->items, sizeof(PyObject *) * (size_t)ncap);
        if (!ni) {
            Py_DECREF(o);
            PyErr_NoMemory();
            return -1;
        }
        b->items = ni;
        b->cap = ncap;
    }
    b->items[b->n++] = o;
    (void)vm;
    return 0;
}

/* A new reference to a plain list equal to a finished builder. */
static PyObject *builder_materialise(VM *vm, Builder *b) {
    if (!B_DONE(b)) {
        unsupported("a frames list used before it was complete");
        return NULL;
    }
    if (b->n < 0)
        return PyList_New(0);
    PyObject *lst = PyList_GET_ITEM(vm->stacks, b->n);
    return PyList_GetSlice(lst, 0, PyList_GET_SIZE(lst));
}

/* Consume a value and return it as a new reference to a Python object. */
static PyObject *take_obj(VM *vm, Val *v) {
    PyObject *o = NULL;
    switch (v->kind) {
    case V_OBJ:
        o = v->u.o;
        break;
    case V_INT:
        o = PyLong_FromLongLong(v->u.i);
        break;
    case V_STACKB:
        o = builder_materialise(vm, &vm->bld[v->u.idx]);
        break;
    case V_ENTRY:
        free_entry(vm, v->u.idx);
        unsupported("a trace entry used outside its device trace");
        break;
    default:
        malformed("bad stack value");
        break;
    }
    v->kind = V_INT;
    v->u.i = 0;
    return o;
}

/* ------------------------------------------------------------------------ */
/* trace entries */

static const int COL_WIDTH[8] = {1, 8, 8, 8, 8, 8, 4, 4};

static void trace_pointers(Trace *t) {
    t->action = (int8_t *)PyBytes_AS_STRING(t->col[0]);
    for (int k = 0; k < 5; k++)
        t->ints[k] = (long long *)PyBytes_AS_STRING(t->col[1 + k]);
    t->stack = (int32_t *)PyBytes_AS_STRING(t->col[6]);
    t->um = (int32_t *)PyBytes_AS_STRING(t->col[7]);
}

static int grow_trace(Trace *t) {
    Py_ssize_t ncap = t->cap ? t->cap + t->cap / 2 : 1024;
    for (int c = 0; c < 8; c++) {
        if (ncap > PY_SSIZE_T_MAX / 8) {
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t nbytes = ncap * COL_WIDTH[c];
        if (!t->col[c]) {
            t->col[c] = PyBytes_FromStringAndSize(NULL, nbytes);
            if (!t->col[c])
                return -1;
        } else if (_PyBytes_Resize(&t->col[c], nbytes) < 0) { /* on failure it is freed and NULL */
            return -1;
        }
    }
    trace_pointers(t);
    t->cap = ncap;
    return 0;
}

static int commit_entry(VM *vm, Trace *t, Val *v) {
    if (v->kind != V_ENTRY)
        return unsupported("a device trace holds something other than entry dicts");
    Py_ssize_t idx = v->u.idx;
    v->kind = V_INT;
    Entry *e = &vm->entries[idx];
    if (&vm->tr[e->trace] != t) {
        free_entry(vm, idx);
        return unsupported("a trace entry moved between device traces");
    }
    if (t->n == t->cap && grow_trace(t) < 0) {
        free_entry(vm, idx);
        return -1;
    }
    Py_ssize_t n = t->n;
    t->action[n] = e->action;
    for (int k = 0; k < 5; k++)
        t->ints[k][n] = e->ints[k];
    t->stack[n] = e->stack;
    t->um[n] = e->um;
    for (int f = 0; f < NFIELDS; f++)
        if (e->present & (1u << f))
            t->present[f]++;
    if (n == 0)
        t->time_first = (e->present >> F_TIME) & 1;
    t->n = n + 1;
    free_entry(vm, idx);
    return 0;
}

static int new_entry(VM *vm, Py_ssize_t trace) {
    Py_ssize_t idx;
    if (vm->nefree)
        idx = vm->efree[--vm->nefree];
    else {
        if (vm->nent == vm->entcap) {
            Py_ssize_t ncap = vm->entcap ? vm->entcap * 2 : 1024;
            Entry *ne = PyMem_Realloc(vm->entries, sizeof(Entry) * (size_t)ncap);
            if (!ne) {
                PyErr_NoMemory();
                return -1;
            }
            vm->entries = ne;
            Py_ssize_t *nf = PyMem_Realloc(vm->efree, sizeof(Py_ssize_t) * (size_t)ncap);
            if (!nf) {
                PyErr_NoMemory();
                return -1;
            }
            vm->efree = nf;
            vm->entcap = vm->efcap = ncap;
        }
        idx = vm->nent++;
    }
    Entry *e = &vm->entries[idx];
    e->action = (int8_t)(vm->n_actions - 1);
    for (int k = 0; k < 5; k++)
        e->ints[k] = INT_DEFAULTS[k];
    e->stack = -1;
    e->um = -1;
    e->present = 0;
    e->trace = trace;
    Val v;
    v.kind = V_ENTRY;
    v.depth = 1;
    v.u.idx = idx;
    vm->cost += C_CONTAINER;
    return push(vm, v);
}

/* field code of a key (a str); cached by identity with strong references */
static int field_of(VM *vm, PyObject *k) {
    for (int i = 0; i < vm->nk; i++)
        if (vm->kcache[i] == k)
            return vm->kcode[i];
    PyObject *c = PyDict_GetItemWithError(vm->field_codes, k);
    if (!c && PyErr_Occurred())
        return -1;
    int code = c ? (int)PyLong_AsLong(c) : F_OTHER;
    if (vm->nk < NCACHE) {
        Py_INCREF(k);
        vm->kcache[vm->nk] = k;
        vm->kcode[vm->nk++] = code;
    }
    return code;
}

static int action_of(VM *vm, PyObject *a, Trace *t) {
    /* acode holds the code, plus 0x100 for names not in the caller's tuple */
    for (int i = 0; i < vm->na; i++)
        if (vm->acache[i] == a) {
            if ((vm->acode[i] & 0x100) && PySet_Add(t->unknown, a) < 0)
                return -1;
            return vm->acode[i] & 0xff;
        }
    PyObject *c = PyDict_GetItemWithError(vm->action_codes, a);
    if (!c && PyErr_Occurred())
        return -1;
    int code = c ? (int)PyLong_AsLong(c) : vm->n_actions - 1;
    if (!c && PySet_Add(t->unknown, a) < 0)
        return -1;
    if (vm->na < NCACHE) {
        Py_INCREF(a);
        vm->acache[vm->na] = a;
        vm->acode[vm->na++] = code | (c ? 0 : 0x100);
    }
    return code;
}

/* An int beyond int64 as memprof.limits.to_i64: unsigned 64-bit wraps (2^64-1 -> -1), wider clamps. */
static long long wrap_i64(PyObject *o) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (!overflow)
        return v;
    if (overflow < 0)
        return LLONG_MIN;
    unsigned long long u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return LLONG_MAX;
    }
    return (long long)u;
}

static int entry_set(VM *vm, Py_ssize_t eidx, Val *k, Val *v) {
    Entry *e = &vm->entries[eidx];
    int rc = 0;
    if (k->kind != V_OBJ || !PyUnicode_CheckExact(k->u.o)) {
        rc = unsupported("a trace entry has a key that is not a str");
        goto done;
    }
    int f = field_of(vm, k->u.o);
    if (f < 0) {
        rc = -1;
        goto done;
    }
    if (v->kind == V_ENTRY) {
        rc = unsupported("a trace entry inside a trace entry");
        goto done;
    }
    if (f < NFIELDS && (e->present & (1u << f))) { /* the pure loader decides: the last value wins */
        rc = unsupported("a trace entry with a duplicated key");
        goto done;
    }
    switch (f) {
    case F_ACTION:
        if (v->kind != V_OBJ || !PyUnicode_CheckExact(v->u.o)) {
            rc = unsupported("a trace entry's action is not a str");
            goto done;
        }
        {
            int code = action_of(vm, v->u.o, &vm->tr[e->trace]);
            if (code < 0) {
                rc = -1;
                goto done;
            }
            e->action = (int8_t)code;
        }
        break;
    case F_ADDR:
    case F_SIZE:
    case F_STREAM:
    case F_TIME:
    case F_DFREE:
        if (v->kind == V_INT)
            e->ints[f - F_ADDR] = v->u.i;
        else if (v->kind == V_OBJ && PyLong_CheckExact(v->u.o)) {
            e->ints[f - F_ADDR] = wrap_i64(v->u.o);
        } else {
            rc = unsupported("a trace entry's integer field holds a non-integer");
            goto done;
        }
        break;
    case F_FRAMES:
        if (v->kind == V_STACKB) {
            int32_t sid = builder_finish(vm, &vm->bld[v->u.idx]);
            if (sid == -2) {
                rc = -1;
                goto done;
            }
            e->stack = sid;
        } else if (v->kind == V_OBJ && v->u.o == Py_None) {
            e->stack = -1;
        } else if (v->kind == V_OBJ && (PyList_CheckExact(v->u.o) || PyTuple_CheckExact(v->u.o))) {
            PyObject *seq = v->u.o;
            Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
            if (n == 0)
                e->stack = -1;
            else {
                int32_t sid = intern_items(vm, PySequence_Fast_ITEMS(seq), n, 0);
                if (sid == -2) {
                    rc = -1;
                    goto done;
                }
                e->stack = sid;
            }
        } else {
            rc = unsupported("a trace entry's frames is not a list");
            goto done;
        }
        break;
    case F_UM:
        if (v->kind == V_OBJ && (v->u.o == Py_None || (PyUnicode_CheckExact(v->u.o) && PyUnicode_GET_LENGTH(v->u.o) == 0)))
            e->um = -1;
        else if (v->kind == V_OBJ && PyUnicode_CheckExact(v->u.o)) {
            PyObject *c = PyDict_GetItemWithError(vm->um_index, v->u.o);
            if (c)
                e->um = (int32_t)PyLong_AsLong(c);
            else if (PyErr_Occurred()) {
                rc = -1;
                goto done;
            } else {
                Py_ssize_t code = PyList_GET_SIZE(vm->um_values);
                PyObject *ci = PyLong_FromSsize_t(code);
                if (!ci || PyDict_SetItem(vm->um_index, v->u.o, ci) < 0 || PyList_Append(vm->um_values, v->u.o) < 0) {
                    Py_XDECREF(ci);
                    rc = -1;
                    goto done;
                }
                Py_DECREF(ci);
                e->um = (int32_t)code;
            }
        } else {
            rc = unsupported("a trace entry's user_metadata is not a str");
            goto done;
        }
        break;
    default:
        break;
    }
    if (f < NFIELDS)
        e->present |= 1u << f;
done:
    val_clear(vm, k);
    val_clear(vm, v);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* container opcodes */

static int is_key(VM *vm, Val *v, int field) {
    if (v->kind != V_OBJ || !PyUnicode_CheckExact(v->u.o))
        return 0;
    return field_of(vm, v->u.o) == field;
}

/* Is a new container at the top of the stack being built as an item of target (a V_OBJ list or V_ENTRY)? */
static Py_ssize_t item_target(VM *vm) {
    /* returns the stack position of the container the next pushed value will be added to, or -1 */
    if (vm->nm && vm->marks[vm->nm - 1] >= 1)
        return vm->marks[vm->nm - 1] - 1;
    return -1;
}

static int op_empty_dict(VM *vm) {
    /* a trace entry: appended to a device trace, alone (APPEND) or in a batch (MARK ... APPENDS) */
    if (vm->ntr && vm->sp) {
        Val *top = &vm->stack[vm->sp - 1];
        if (top->kind == V_OBJ) {
            int t = trace_index(vm, top->u.o);
            if (t >= 0)
                return new_entry(vm, t);
        }
        Py_ssize_t tp = item_target(vm);
        if (tp >= 0 && vm->stack[tp].kind == V_OBJ && (top->kind == V_ENTRY || tp == vm->sp - 1)) {
            int t = trace_index(vm, vm->stack[tp].u.o);
            if (t >= 0)
                return new_entry(vm, t);
        }
    }
    return push_container(vm, PyDict_New());
}

static int add_trace(VM *vm, PyObject *lst) {
    if (vm->ntr >= MAX_TRACES)
        return unsupported("too many device traces");
    if (vm->ntr == vm->trcap) {
        Py_ssize_t ncap = vm->trcap ? vm->trcap * 2 : 8;
        Trace *nt = PyMem_Realloc(vm->tr, sizeof(Trace) * (size_t)ncap);
        if (!nt) {
            PyErr_NoMemory();
            return -1;
        }
        vm->tr = nt;
        vm->trcap = ncap;
    }
    Trace *t = &vm->tr[vm->ntr];
    memset(t, 0, sizeof(Trace));
    t->unknown = PySet_New(NULL);
    if (!t->unknown)
        return -1;
    Py_INCREF(lst);
    t->list = lst;
    vm->ntr++;
    return 0;
}

static int op_empty_list(VM *vm) {
    if (vm->sp) {
        Val *top = &vm->stack[vm->sp - 1];
        Py_ssize_t tp = item_target(vm);
        /* root['device_traces']: the value for that key in the top-level dict's SETITEMS */
        if (!vm->dt && tp == 0 && vm->stack[0].kind == V_OBJ && PyDict_CheckExact(vm->stack[0].u.o) &&
            ((vm->sp - 1 - (tp + 1)) % 2) == 0 && top->kind == V_OBJ && PyUnicode_CheckExact(top->u.o) &&
            PyUnicode_CompareWithASCIIString(top->u.o, "device_traces") == 0) {
            PyObject *l = PyList_New(0);
            if (!l)
                return -1;
            Py_INCREF(l);
            vm->dt = l;
            return push_container(vm, l);
        }
        if (!vm->dt && vm->sp == 2 && vm->stack[0].kind == V_OBJ && PyDict_CheckExact(vm->stack[0].u.o) &&
            top->kind == V_OBJ && PyUnicode_CheckExact(top->u.o) &&
            PyUnicode_CompareWithASCIIString(top->u.o, "device_traces") == 0 && vm->nm == 0) {
            PyObject *l = PyList_New(0); /* a single SETITEM on the root */
            if (!l)
                return -1;
            Py_INCREF(l);
            vm->dt = l;
            return push_container(vm, l);
        }
        /* a device trace: an item of root['device_traces'] */
        if (vm->dt && ((top->kind == V_OBJ && top->u.o == vm->dt) ||
                       (tp >= 0 && vm->stack[tp].kind == V_OBJ && vm->stack[tp].u.o == vm->dt))) {
            PyObject *l = PyList_New(0);
            if (!l)
                return -1;
            if (add_trace(vm, l) < 0) {
                Py_DECREF(l);
                return -1;
            }
            return push_container(vm, l);
        }
        /* the frames list of a trace entry */
        if (vm->ntr && is_key(vm, top, F_FRAMES)) {
            int in_entry = 0;
            if (vm->sp >= 2 && vm->stack[vm->sp - 2].kind == V_ENTRY)
                in_entry = 1;
            else if (tp >= 0 && vm->stack[tp].kind == V_ENTRY && ((vm->sp - 1 - (tp + 1)) % 2) == 0)
                in_entry = 1;
            if (in_entry) {
                if (vm->nb == vm->bcap) {
                    Py_ssize_t ncap = vm->bcap ? vm->bcap * 2 : 1024;
                    Builder *nb = PyMem_Realloc(vm->bld, sizeof(Builder) * (size_t)ncap);
                    if (!nb) {
                        PyErr_NoMemory();
                        return -1;
                    }
                    vm->bld = nb;
                    vm->bcap = ncap;
                }
                Builder *b = &vm->bld[vm->nb];
                memset(b, 0, sizeof(Builder));
                Val v;
                v.kind = V_STACKB;
                v.depth = 1;
                v.u.idx = vm->nb++;
                vm->cost += C_CONTAINER;
                return push(vm, v);
            }
        }
    }
    return push_container(vm, PyList_New(0));
}

/* Add the values stack[from:sp] to the container at stack[tp], then pop them. */
static int append_items(VM *vm, Py_ssize_t tp, Py_ssize_t from) {
    if (add_depth(vm, tp, from) < 0)
        return -1;
    Val *tv = &vm->stack[tp];
    Py_ssize_t i;
    if (tv->kind == V_STACKB) {
        Builder *b = &vm->bld[tv->u.idx];
        for (i = from; i < vm->sp; i++) {
            PyObject *o = take_obj(vm, &vm->stack[i]);
            if (!o || builder_append(vm, b, o) < 0)
                return -1;
        }
    } else if (tv->kind == V_OBJ && PyList_CheckExact(tv->u.o)) {
        int t = trace_index(vm, tv->u.o);
        if (t >= 0) {
            for (i = from; i < vm->sp; i++)
                if (commit_entry(vm, &vm->tr[t], &vm->stack[i]) < 0)
                    return -1;
        } else {
            for (i = from; i < vm->sp; i++) {
                PyObject *o = take_obj(vm, &vm->stack[i]);
                if (!o)
                    return -1;
                int rc = PyList_Append(tv->u.o, o);
                Py_DECREF(o);
                if (rc < 0)
                    return -1;
            }
        }
    } else
        return unsupported("APPEND to something other than a list");
    vm->sp = from;
    return 0;
}

static int set_items(VM *vm, Py_ssize_t tp, Py_ssize_t from) {
    if ((vm->sp - from) % 2)
        return malformed("odd number of items for SETITEMS");
    if (add_depth(vm, tp, from) < 0)
        return -1;
    Val *tv = &vm->stack[tp];
    Py_ssize_t i;
    if (tv->kind == V_ENTRY) {
        for (i = from; i < vm->sp; i += 2)
            if (entry_set(vm, tv->u.idx, &vm->stack[i], &vm->stack[i + 1]) < 0)
                return -1;
    } else if (tv->kind == V_OBJ && PyDict_CheckExact(tv->u.o)) {
        for (i = from; i < vm->sp; i += 2) {
            PyObject *k = take_obj(vm, &vm->stack[i]);
            if (!k)
                return -1;
            PyObject *v = take_obj(vm, &vm->stack[i + 1]);
            if (!v) {
                Py_DECREF(k);
                return -1;
            }
            int rc = PyDict_SetItem(tv->u.o, k, v);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0)
                return -1;
        }
    } else
        return unsupported("SETITEM on something other than a dict");
    vm->sp = from;
    return 0;
}

/* Build a tuple/list/set of stack[from:sp] and replace them by it. */
static int collect(VM *vm, Py_ssize_t from, int kind /* 0 tuple, 1 list, 2 frozenset */) {
    Py_ssize_t n = vm->sp - from;
    int d = 0;
    for (Py_ssize_t i = from; i < vm->sp; i++)
        if (vm->stack[i].depth > d)
            d = vm->stack[i].depth;
    if (d + 1 > vm->max_depth) /* checked before anything is built or hashed */
        return too_deep(vm);
    vm->cost += C_CONTAINER + (long long)C_ITEM * n;
    PyObject *c = kind == 1 ? PyList_New(n) : PyTuple_New(n);
    if (!c)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = take_obj(vm, &vm->stack[from + i]);
        if (!o) {
            Py_DECREF(c); /* unfilled slots are NULL, which both deallocators skip */
            return -1;
        }
        if (kind == 1)
            PyList_SET_ITEM(c, i, o);
        else
            PyTuple_SET_ITEM(c, i, o);
    }
    vm->sp = from;
    if (kind == 2) {
        PyObject *fs = PyFrozenSet_New(c);
        Py_DECREF(c);
        c = fs;
    }
    if (push_obj(vm, c) < 0)
        return -1;
    vm->stack[vm->sp - 1].depth = d + 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* memo */

static int memo_put(VM *vm, Py_ssize_t idx) {
    if (vm->sp == 0)
        return malformed("MEMOIZE on an empty stack");
    if (idx < 0)
        return malformed("negative memo index");
    if (idx > vm->memo_count) /* pickle fills the memo in order: slots 0..memo_count-1 are all set */
        return limit_err("memo", PyUnicode_FromFormat("memo index %zd after %zd entries", idx, vm->memo_count));
    if (idx >= vm->memolen) {
        Py_ssize_t ncap = vm->memolen ? vm->memolen : 1024;
        while (ncap <= idx)
            ncap += ncap / 2;
        Slot *nm = PyMem_Realloc(vm->memo, sizeof(Slot) * (size_t)ncap);
        if (!nm) {
            PyErr_NoMemory();
            return -1;
        }
        memset(nm + vm->memolen, 0, sizeof(Slot) * (size_t)(ncap - vm->memolen));
        vm->memo = nm;
        uint16_t *nd = PyMem_Realloc(vm->memo_depth, sizeof(uint16_t) * (size_t)ncap);
        if (!nd) {
            PyErr_NoMemory();
            return -1;
        }
        vm->memo_depth = nd;
        vm->memolen = ncap;
    }
    Val *top = &vm->stack[vm->sp - 1];
    Slot nv;
    switch (top->kind) {
    case V_INT: {
        PyObject *o = PyLong_FromLongLong(top->u.i);
        if (!o)
            return -1;
        top->kind = V_OBJ;
        top->u.o = o;
    }
        /* fall through */
    case V_OBJ:
        if (((uintptr_t)top->u.o & 3) != 0)
            return malformed("unaligned object");
        Py_INCREF(top->u.o);
        nv = (Slot)top->u.o;
        break;
    case V_ENTRY:
        nv = S_RELEASED; /* entries are never referenced again: no object kept */
        break;
    case V_STACKB:
        nv = S_BUILDER(top->u.idx);
        break;
    default:
        return malformed("bad stack value");
    }
    Slot old = vm->memo[idx];
    if (old == S_EMPTY)
        vm->memo_count++;
    vm->memo[idx] = nv;
    vm->memo_depth[idx] = (uint16_t)(top->depth > 65535 ? 65535 : top->depth);
    if (S_IS_OBJ(old))
        Py_DECREF((PyObject *)old);
    return 0;
}

static int memo_get(VM *vm, Py_ssize_t idx) {
    if (idx < 0 || idx >= vm->memolen || vm->memo[idx] == S_EMPTY)
        return malformed("memo key not found");
    Slot x = vm->memo[idx];
    if (x == S_RELEASED)
        return unsupported("a trace entry is referenced twice");
    if (S_IS_BUILDER(x)) {
        Val v;
        v.kind = V_STACKB;
        v.depth = vm->memo_depth[idx];
        v.u.idx = (Py_ssize_t)(x >> 2);
        return push(vm, v);
    }
    PyObject *o = (PyObject *)x;
    if (o == vm->dt || trace_index(vm, o) >= 0)
        return unsupported("a device trace is referenced twice");
    Py_INCREF(o);
    if (push_obj(vm, o) < 0)
        return -1;
    vm->stack[vm->sp - 1].depth = vm->memo_depth[idx];
    return 0;
}

static int parse_line_index(const char *s, Py_ssize_t n, Py_ssize_t *out) {
    Py_ssize_t v = 0;
    if (n == 0)
        return malformed("bad memo index");
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (PY_SSIZE_T_MAX - 9) / 10)
            return malformed("bad memo index");
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* numbers */

static int push_long_bytes(VM *vm, const char *p, Py_ssize_t n) {
    if (n == 0)
        return push_int(vm, 0);
    if (n <= 8) {
        uint64_t u = le_u(p, (int)n);
        if (n < 8 && (p[n - 1] & 0x80))
            u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        return push_int(vm, (long long)u);
    }
    PyObject *o = _PyLong_FromByteArray((const unsigned char *)p, (size_t)n, 1, 1);
    if (!o)
        return -1;
    long long v;
    int overflow = 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0 && !(v == -1 && PyErr_Occurred())) {
        Py_DECREF(o);
        return push_int(vm, v);
    }
    PyErr_Clear();
    return push_obj(vm, o);
}

static int push_text_int(VM *vm, const char *s, Py_ssize_t n, int is_long) {
    if (!is_long && n == 2 && s[0] == '0' && (s[1] == '0' || s[1] == '1')) {
        PyObject *b = s[1] == '1' ? Py_True : Py_False;
        Py_INCREF(b);
        return push_obj(vm, b);
    }
    if (is_long && n > 0 && s[n - 1] == 'L')
        n--;
    char *tmp = PyMem_Malloc((size_t)n + 1);
    if (!tmp) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(tmp, s, (size_t)n);
    tmp[n] = 0;
    if (strlen(tmp) != (size_t)n) {
        PyMem_Free(tmp);
        return malformed("NUL in a text integer");
    }
    char *end = NULL;
    PyObject *o = PyLong_FromString(tmp, &end, 10);
    PyMem_Free(tmp);
    if (!o)
        return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (!overflow && !(v == -1 && PyErr_Occurred())) {
        Py_DECREF(o);
        return push_int(vm, v);
    }
    PyErr_Clear();
    return push_obj(vm, o);
}

/* ------------------------------------------------------------------------ */
/* the result */

static int dict_set_steal(PyObject *d, const char *k, PyObject *v) {
    if (!v)
        return -1;
    int rc = PyDict_SetItemString(d, k, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *trace_columns(Trace *t) {
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    Py_ssize_t n = t->n;
    if (dict_set_steal(d, "n", PyLong_FromSsize_t(n)) < 0)
        goto fail;
    static const char *col_names[8] = {"action", "addr", "size", "stream", "time_us", "device_free", "stack", "user_metadata"};
    for (int c = 0; c < 8; c++) {
        PyObject *b = t->col[c];
        t->col[c] = NULL;
        if (!b)
            b = PyBytes_FromStringAndSize(NULL, 0);
        else if (_PyBytes_Resize(&b, n * COL_WIDTH[c]) < 0) /* shrink to the entries read, in place */
            goto fail;
        if (dict_set_steal(d, col_names[c], b) < 0)
            goto fail;
    }
    t->action = NULL;
    for (int k = 0; k < 5; k++)
        t->ints[k] = NULL;
    t->stack = NULL;
    t->um = NULL;
    PyObject *present = PyDict_New();
    if (!present || dict_set_steal(d, "present", present) < 0)
        goto fail;
    for (int f = 0; f < NFIELDS; f++)
        if (dict_set_steal(present, FIELD_NAMES[f], PyLong_FromSsize_t(t->present[f])) < 0)
            goto fail;
    if (dict_set_steal(d, "time_us_first", PyBool_FromLong(n == 0 || t->time_first)) < 0)
        goto fail;
    if (dict_set_steal(d, "unknown_actions", PySequence_List(t->unknown)) < 0)
        goto fail;
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *finish(VM *vm, PyObject *root) {
    PyObject *traces = NULL, *res = NULL;
    int fast = 0;
    if (vm->dt) {
        if (!PyDict_CheckExact(root)) {
            unsupported("device_traces outside the top-level dict");
            goto fail;
        }
        PyObject *dt = PyDict_GetItemString(root, "device_traces");
        if (dt != vm->dt) {
            unsupported("device_traces was replaced");
            goto fail;
        }
        Py_ssize_t nd = PyList_GET_SIZE(dt);
        traces = PyList_New(nd);
        if (!traces)
            goto fail;
        for (Py_ssize_t i = 0; i < nd; i++) {
            int t = trace_index(vm, PyList_GET_ITEM(dt, i));
            if (t < 0 || vm->tr[t].placed) {
                unsupported("a device trace that is not a list of entries");
                goto fail;
            }
            vm->tr[t].placed = 1;
            PyObject *cols = trace_columns(&vm->tr[t]);
            if (!cols)
                goto fail;
            PyList_SET_ITEM(traces, i, cols);
        }
        for (Py_ssize_t t = 0; t < vm->ntr; t++)
            if (!vm->tr[t].placed && vm->tr[t].n) {
                unsupported("trace entries outside device_traces");
                goto fail;
            }
        if (PyDict_SetItemString(root, "device_traces", traces) < 0)
            goto fail;
        Py_CLEAR(traces);
        fast = 1;
    } else if (vm->ntr) {
        unsupported("device traces without device_traces");
        goto fail;
    }
    res = Py_BuildValue("(OOOO)", root, fast ? Py_True : Py_False, vm->stacks, vm->um_values);
fail:
    Py_XDECREF(traces);
    return res;
}

/* ------------------------------------------------------------------------ */
/* cleanup */

/* The memo and the builders are not needed once the file is read: free them before the result is built. */
static void release_memo(VM *vm) {
    for (Py_ssize_t i = 0; i < vm->memolen; i++)
        if (S_IS_OBJ(vm->memo[i]))
            Py_DECREF((PyObject *)vm->memo[i]);
    PyMem_Free(vm->memo);
    vm->memo = NULL;
    PyMem_Free(vm->memo_depth);
    vm->memo_depth = NULL;
    vm->memolen = 0;
    for (Py_ssize_t i = 0; i < vm->nb; i++) {
        Builder *b = &vm->bld[i];
        if (!B_DONE(b)) {
            for (Py_ssize_t j = 0; j < b->n; j++)
                Py_XDECREF(b->items[j]);
            PyMem_Free(b->items);
        }
    }
    PyMem_Free(vm->bld);
    vm->bld = NULL;
    vm->nb = vm->bcap = 0;
}

static void vm_free(VM *vm) {
    for (Py_ssize_t i = 0; i < vm->sp; i++)
        val_clear(vm, &vm->stack[i]);
    PyMem_Free(vm->stack);
    PyMem_Free(vm->marks);
    release_memo(vm);
    PyMem_Free(vm->entries);
    PyMem_Free(vm->efree);
    for (Py_ssize_t i = 0; i < vm->ntr; i++) {
        Trace *t = &vm->tr[i];
        Py_XDECREF(t->list);
        Py_XDECREF(t->unknown);
        for (int c = 0; c < 8; c++)
            Py_XDECREF(t->col[c]);
    }
    PyMem_Free(vm->tr);
    Py_XDECREF(vm->dt);
    Py_XDECREF(vm->stacks);
    PyMem_Free(vm->shash);
    PyMem_Free(vm->table);
    Py_XDECREF(vm->um_index);
    Py_XDECREF(vm->um_values);
    Py_XDECREF(vm->action_codes);
    Py_XDECREF(vm->field_codes);
    for (int i = 0; i < vm->nk; i++)
        Py_XDECREF(vm->kcache[i]);
    for (int i = 0; i < vm->na; i++)
        Py_XDECREF(vm->acache[i]);
    PyMem_Free(vm->buf);
}

/* ------------------------------------------------------------------------ */
/* the VM */

static PyObject *run(VM *vm) {
    const char *p;
    Py_ssize_t n, m, idx;
    int proto_seen = 0;
    unsigned long ops = 0;
    for (;;) {
        if (!(++ops & 0xfff) && check_memory(vm) < 0)
            return NULL;
        if (!(p = take(vm, 1)))
            return NULL;
        unsigned char op = (unsigned char)*p;
        if (!proto_seen && op != 0x80) {
            unsupported("not a protocol 2+ pickle");
            return NULL;
        }
        switch (op) {
        case 0x80: /* PROTO */
            if (!(p = take(vm, 1)))
                return NULL;
            if ((unsigned char)*p < 2 || (unsigned char)*p > 5) {
                unsupported("pickle protocol outside 2..5");
                return NULL;
            }
            proto_seen = 1;
            break;
        case 0x95: { /* FRAME: the data follows inline; as pickle's C unpickler, its bytes must all be there */
            if (!(p = take(vm, 8)))
                return NULL;
            uint64_t fl = le_u(p, 8);
            if (fl > (uint64_t)(vm->max_bytes - (vm->base + vm->pos))) {
                limit_err("bytes", PyUnicode_FromFormat("a FRAME of %llu bytes", (unsigned long long)fl));
                return NULL;
            }
            if (vm->frame_end >= 0 && vm->base + vm->pos != vm->frame_end) {
                malformed("a FRAME inside a FRAME");
                return NULL;
            }
            if (fill(vm, (Py_ssize_t)fl) < 0)
                return NULL;
            vm->frame_end = vm->base + vm->pos + (long long)fl;
            break;
        }
        case '.': { /* STOP */
            if (vm->sp != 1 || vm->nm) {
                if (vm->sp == 0) {
                    malformed("STOP on an empty stack");
                    return NULL;
                }
                unsupported("STOP with extra values on the stack");
                return NULL;
            }
            if (check_memory(vm) < 0)
                return NULL;
            PyObject *root = take_obj(vm, &vm->stack[--vm->sp]);
            if (!root)
                return NULL;
            release_memo(vm);
            PyObject *r = finish(vm, root);
            Py_DECREF(root);
            return r;
        }
        case '(': /* MARK */
            if (vm->nm == vm->mcap) {
                Py_ssize_t ncap = vm->mcap ? vm->mcap * 2 : 64;
                Py_ssize_t *nm = PyMem_Realloc(vm->marks, sizeof(Py_ssize_t) * (size_t)ncap);
                if (!nm) {
                    PyErr_NoMemory();
                    return NULL;
                }
                vm->marks = nm;
                vm->mcap = ncap;
            }
            vm->marks[vm->nm++] = vm->sp;
            break;
        case '0': /* POP */
            if (vm->nm && vm->marks[vm->nm - 1] == vm->sp) {
                vm->nm--;
                break;
            }
            if (vm->sp == 0) {
                malformed("POP on an empty stack");
                return NULL;
            }
            if (vm->stack[vm->sp - 1].kind == V_ENTRY) {
                unsupported("a trace entry popped");
                return NULL;
            }
            val_clear(vm, &vm->stack[--vm->sp]);
            break;
        case '1': /* POP_MARK */
            if (pop_mark(vm, &m) < 0)
                return NULL;
            while (vm->sp > m) {
                if (vm->stack[vm->sp - 1].kind == V_ENTRY) {
                    unsupported("a trace entry popped");
                    return NULL;
                }
                val_clear(vm, &vm->stack[--vm->sp]);
            }
            break;
        case '2': { /* DUP */
            if (vm->sp == 0) {
                malformed("DUP on an empty stack");
                return NULL;
            }
            Val v = vm->stack[vm->sp - 1];
            if (v.kind == V_ENTRY) {
                unsupported("DUP of a trace entry");
                return NULL;
            }
            if (v.kind == V_OBJ) {
                if (v.u.o == vm->dt || trace_index(vm, v.u.o) >= 0) {
                    unsupported("DUP of a device trace");
                    return NULL;
                }
                Py_INCREF(v.u.o);
            }
            if (push(vm, v) < 0)
                return NULL;
            break;
        }
        case '}': /* EMPTY_DICT */
            if (op_empty_dict(vm) < 0)
                return NULL;
            break;
        case ']': /* EMPTY_LIST */
            if (op_empty_list(vm) < 0)
                return NULL;
            break;
        case ')': /* EMPTY_TUPLE */
            if (push_container(vm, PyTuple_New(0)) < 0)
                return NULL;
            break;
        case 0x8f: /* EMPTY_SET */
            if (push_container(vm, PySet_New(NULL)) < 0)
                return NULL;
            break;
        case 't': /* TUPLE */
            if (pop_mark(vm, &m) < 0 || collect(vm, m, 0) < 0)
                return NULL;
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
            n = op - 0x84;
            if (vm->sp < n || (vm->nm && vm->marks[vm->nm - 1] > vm->sp - n)) {
                malformed("not enough values for TUPLEn");
                return NULL;
            }
            if (collect(vm, vm->sp - n, 0) < 0)
                return NULL;
            break;
        case 'l': /* LIST */
            if (pop_mark(vm, &m) < 0 || collect(vm, m, 1) < 0)
                return NULL;
            break;
        case 0x91: /* FROZENSET */
            if (pop_mark(vm, &m) < 0 || collect(vm, m, 2) < 0)
                return NULL;
            break;
        case 'd': { /* DICT */
            if (pop_mark(vm, &m) < 0)
                return NULL;
            PyObject *d = PyDict_New();
            if (!d)
                return NULL;
            Val dv;
            dv.kind = V_OBJ;
            dv.depth = 1;
            dv.u.o = d;
            vm->cost += C_CONTAINER;
            /* insert the dict below its items, then SETITEMS into it */
            if (push(vm, dv) < 0)
                return NULL;
            memmove(&vm->stack[m + 1], &vm->stack[m], sizeof(Val) * (size_t)(vm->sp - 1 - m));
            vm->stack[m] = dv;
            if (set_items(vm, m, m + 1) < 0)
                return NULL;
            break;
        }
        case 'a': /* APPEND */
            if (vm->sp < 2 || (vm->nm && vm->marks[vm->nm - 1] > vm->sp - 2)) {
                malformed("APPEND without a list");
                return NULL;
            }
            if (append_items(vm, vm->sp - 2, vm->sp - 1) < 0)
                return NULL;
            break;
        case 'e': /* APPENDS */
            if (pop_mark(vm, &m) < 0)
                return NULL;
            if (m < 1) {
                malformed("APPENDS without a list");
                return NULL;
            }
            if (append_items(vm, m - 1, m) < 0)
                return NULL;
            break;
        case 's': /* SETITEM */
            if (vm->sp < 3 || (vm->nm && vm->marks[vm->nm - 1] > vm->sp - 3)) {
                malformed("SETITEM without a dict");
                return NULL;
            }
            if (set_items(vm, vm->sp - 3, vm->sp - 2) < 0)
                return NULL;
            break;
        case 'u': /* SETITEMS */
            if (pop_mark(vm, &m) < 0)
                return NULL;
            if (m < 1) {
                malformed("SETITEMS without a dict");
                return NULL;
            }
            if (set_items(vm, m - 1, m) < 0)
                return NULL;
            break;
        case 0x90: { /* ADDITEMS */
            if (pop_mark(vm, &m) < 0)
                return NULL;
            if (m < 1) {
                malformed("ADDITEMS without a set");
                return NULL;
            }
            Val *tv = &vm->stack[m - 1];
            if (tv->kind != V_OBJ || !PySet_CheckExact(tv->u.o)) {
                unsupported("ADDITEMS to something other than a set");
                return NULL;
            }
            if (add_depth(vm, m - 1, m) < 0)
                return NULL;
            tv = &vm->stack[m - 1];
            for (Py_ssize_t i = m; i < vm->sp; i++) {
                PyObject *o = take_obj(vm, &vm->stack[i]);
                if (!o)
                    return NULL;
                int rc = PySet_Add(tv->u.o, o);
                Py_DECREF(o);
                if (rc < 0)
                    return NULL;
            }
            vm->sp = m;
            break;
        }
        case 0x94: /* MEMOIZE */
            if (memo_put(vm, vm->memo_count) < 0)
                return NULL;
            break;
        case 'p': /* PUT */
            if (readline(vm, &p, &n) < 0 || parse_line_index(p, n, &idx) < 0 || memo_put(vm, idx) < 0)
                return NULL;
            break;
        case 'q': /* BINPUT */
            if (!(p = take(vm, 1)) || memo_put(vm, (unsigned char)*p) < 0)
                return NULL;
            break;
        case 'r': /* LONG_BINPUT */
            if (!(p = take(vm, 4)) || memo_put(vm, (Py_ssize_t)le_u(p, 4)) < 0)
                return NULL;
            break;
        case 'g': /* GET */
            if (readline(vm, &p, &n) < 0 || parse_line_index(p, n, &idx) < 0 || memo_get(vm, idx) < 0)
                return NULL;
            break;
        case 'h': /* BINGET */
            if (!(p = take(vm, 1)) || memo_get(vm, (unsigned char)*p) < 0)
                return NULL;
            break;
        case 'j': /* LONG_BINGET */
            if (!(p = take(vm, 4)) || memo_get(vm, (Py_ssize_t)le_u(p, 4)) < 0)
                return NULL;
            break;
        case 'N': /* NONE */
            Py_INCREF(Py_None);
            if (push_obj(vm, Py_None) < 0)
                return NULL;
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
        {
            PyObject *b = op == 0x88 ? Py_True : Py_False;
            Py_INCREF(b);
            if (push_obj(vm, b) < 0)
                return NULL;
            break;
        }
        case 'I': /* INT */
        case 'L': /* LONG */
            if (readline(vm, &p, &n) < 0 || push_text_int(vm, p, n, op == 'L') < 0)
                return NULL;
            break;
        case 'J': /* BININT */
            if (!(p = take(vm, 4)) || push_int(vm, (long long)(int32_t)(uint32_t)le_u(p, 4)) < 0)
                return NULL;
            break;
        case 'K': /* BININT1 */
            if (!(p = take(vm, 1)) || push_int(vm, (unsigned char)*p) < 0)
                return NULL;
            break;
        case 'M': /* BININT2 */
            if (!(p = take(vm, 2)) || push_int(vm, (long long)le_u(p, 2)) < 0)
                return NULL;
            break;
        case 0x8a: /* LONG1 */
            if (!(p = take(vm, 1)))
                return NULL;
            n = (unsigned char)*p;
            if (!(p = take(vm, n)) || push_long_bytes(vm, p, n) < 0)
                return NULL;
            break;
        case 0x8b: { /* LONG4 */
            if (!(p = take(vm, 4)))
                return NULL;
            int32_t sn = (int32_t)(uint32_t)le_u(p, 4);
            if (sn < 0) {
                malformed("LONG pickle has negative byte count");
                return NULL;
            }
            if ((long long)sn > vm->max_bytes - (vm->base + vm->pos)) {
                limit_err("bytes", PyUnicode_FromFormat("a LONG of %d bytes", (int)sn));
                return NULL;
            }
            vm->cost += C_STR + sn;
            if (!(p = take(vm, sn)) || push_long_bytes(vm, p, sn) < 0)
                return NULL;
            break;
        }
        case 'F': { /* FLOAT */
            if (readline(vm, &p, &n) < 0)
                return NULL;
            char *tmp = PyMem_Malloc((size_t)n + 1);
            if (!tmp) {
                PyErr_NoMemory();
                return NULL;
            }
            memcpy(tmp, p, (size_t)n);
            tmp[n] = 0;
            char *end = NULL;
            double d = PyOS_string_to_double(tmp, &end, PyExc_OverflowError);
            int bad = (d == -1.0 && PyErr_Occurred()) || end == NULL || *end != 0;
            PyMem_Free(tmp);
            if (bad) {
                if (!PyErr_Occurred())
                    malformed("bad FLOAT");
                return NULL;
            }
            if (push_obj(vm, PyFloat_FromDouble(d)) < 0)
                return NULL;
            break;
        }
        case 'G': { /* BINFLOAT */
            if (!(p = take(vm, 8)))
                return NULL;
#if PY_VERSION_HEX >= 0x030B0000
            double d = PyFloat_Unpack8(p, 0);
#else
            double d = _PyFloat_Unpack8((const unsigned char *)p, 0);
#endif
            if (d == -1.0 && PyErr_Occurred())
                return NULL;
            if (push_obj(vm, PyFloat_FromDouble(d)) < 0)
                return NULL;
            break;
        }
        case 0x8c: /* SHORT_BINUNICODE */
        case 'X':  /* BINUNICODE */
        case 0x8d: /* BINUNICODE8 */
        case 'C':  /* SHORT_BINBYTES */
        case 'B':  /* BINBYTES */
        case 0x8e: /* BINBYTES8 */
        case 0x96: /* BYTEARRAY8 */
        case 'U':  /* SHORT_BINSTRING */
        case 'T':  /* BINSTRING */
        {
            int w = (op == 0x8c || op == 'C' || op == 'U') ? 1 : (op == 'X' || op == 'B' || op == 'T') ? 4 : 8;
            if (!(p = take(vm, w)))
                return NULL;
            uint64_t un = le_u(p, w);
            if (op == 'T' && (int32_t)(uint32_t)un < 0) {
                malformed("BINSTRING pickle has negative byte count");
                return NULL;
            }
            if (un > (uint64_t)(vm->max_bytes - (vm->base + vm->pos))) {
                limit_err("bytes", PyUnicode_FromFormat("a string of %llu bytes", (unsigned long long)un));
                return NULL;
            }
            n = (Py_ssize_t)un;
            vm->cost += C_STR + n;
            if (n > (1 << 16) && check_memory(vm) < 0)
                return NULL;
            if (!(p = take(vm, n)))
                return NULL;
            PyObject *o;
            if (op == 0x8c || op == 'X' || op == 0x8d)
                o = PyUnicode_DecodeUTF8(p, n, "surrogatepass");
            else if (op == 'U' || op == 'T')
                o = PyUnicode_DecodeASCII(p, n, "strict");
            else if (op == 0x96)
                o = PyByteArray_FromStringAndSize(p, n);
            else
                o = PyBytes_FromStringAndSize(p, n);
            if (push_obj(vm, o) < 0)
                return NULL;
            break;
        }
        default: {
            static const struct {
                unsigned char op;
                const char *name;
            } names[] = {{'c', "GLOBAL"}, {0x93, "STACK_GLOBAL"}, {'R', "REDUCE"}, {'b', "BUILD"}, {0x81, "NEWOBJ"},
                         {0x92, "NEWOBJ_EX"}, {'P', "PERSID"}, {'Q', "BINPERSID"}, {'i', "INST"}, {'o', "OBJ"},
                         {0x82, "EXT1"}, {0x83, "EXT2"}, {0x84, "EXT4"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"},
                         {'S', "STRING"}, {'V', "UNICODE"}};
            for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (names[i].op == op) {
                    PyErr_SetString(Unsupported, names[i].name);
                    return NULL;
                }
            PyErr_Format(Malformed, "invalid opcode 0x%02x", (unsigned)op);
            return NULL;
        }
        }
    }
}

static PyObject *fp_load(PyObject *self, PyObject *args) {
    PyObject *file, *actions;
    long long max_bytes = 2LL << 30;
    int max_depth = 64;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO!|Li:load", &file, &PyTuple_Type, &actions, &max_bytes, &max_depth))
        return NULL;
    Py_ssize_t na = PyTuple_GET_SIZE(actions);
    if (na < 1 || na > 127) {
        PyErr_SetString(PyExc_ValueError, "actions must hold 1 to 127 names");
        return NULL;
    }
    VM vm;
    memset(&vm, 0, sizeof(vm));
    vm.file = file;
    vm.n_actions = (int)na;
    vm.max_bytes = max_bytes;
    vm.max_depth = max_depth;
    vm.frame_end = -1;
    PyObject *res = NULL;
    vm.stacks = PyList_New(0);
    vm.um_index = PyDict_New();
    vm.um_values = PyList_New(0);
    vm.action_codes = PyDict_New();
    vm.field_codes = PyDict_New();
    if (!vm.stacks || !vm.um_index || !vm.um_values || !vm.action_codes || !vm.field_codes)
        goto done;
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *c = PyLong_FromSsize_t(i);
        if (!c || PyDict_SetItem(vm.action_codes, PyTuple_GET_ITEM(actions, i), c) < 0) {
            Py_XDECREF(c);
            goto done;
        }
        Py_DECREF(c);
    }
    for (int f = 0; f < NFIELDS; f++) {
        PyObject *c = PyLong_FromLong(f);
        if (!c || PyDict_SetItemString(vm.field_codes, FIELD_NAMES[f], c) < 0) {
            Py_XDECREF(c);
            goto done;
        }
        Py_DECREF(c);
    }
    res = run(&vm);
    if (!res)
        normalise_error();
done:
    vm_free(&vm);
    return res;
}

/* ------------------------------------------------------------------------ */
/* scan: the opcodes walked without building anything (the pure loader's guard)
 *
 * The same rules as memprof/safe_pickle.py's scan, opcode for opcode: depth per stack value,
 * the memo filled in order, lengths within max_bytes, the memory estimate. Every opcode is
 * accepted (GLOBAL, REDUCE, ... are placeholders: the restricted unpickler refuses what it must);
 * persistent ids, extension codes and out-of-band buffers raise Unsupported. */

typedef struct {
    int *v;
    Py_ssize_t n, cap;
} IntVec;

static int iv_push(IntVec *a, int x) {
    if (a->n == a->cap) {
        Py_ssize_t ncap = a->cap ? a->cap + a->cap / 2 : 256;
        int *nv = PyMem_Realloc(a->v, sizeof(int) * (size_t)ncap);
        if (!nv) {
            PyErr_NoMemory();
            return -1;
        }
        a->v = nv;
        a->cap = ncap;
    }
    a->v[a->n++] = x;
    return 0;
}

static int scan_memory(VM *vm, IntVec *st, IntVec *memo) {
    long long est = vm->cost + (long long)C_SLOT * st->n + (long long)C_MEMO * memo->n;
    if (est > vm->max_bytes)
        return limit_err("memory", PyUnicode_FromFormat("building it needs more than %lld bytes", est));
    return 0;
}

static int scan_run(VM *vm, IntVec *st, IntVec *marks, IntVec *memo) {
    const char *p;
    Py_ssize_t n;
    unsigned long ops = 0;
#define LEFT (vm->max_bytes - (vm->base + vm->pos))
#define PUSH(d)                         \
    do {                                \
        if (iv_push(st, (d)) < 0)       \
            return -1;                  \
    } while (0)
    for (;;) {
        if (!(++ops & 0xfff) && scan_memory(vm, st, memo) < 0)
            return -1;
        if (!(p = take(vm, 1)))
            return -1;
        unsigned char op = (unsigned char)*p;
        switch (op) {
        case 'N':
        case 0x88:
        case 0x89:
            PUSH(0);
            break;
        case 0x94: /* MEMOIZE */
            if (!st->n)
                return malformed("MEMOIZE on an empty stack");
            if (iv_push(memo, st->v[st->n - 1]) < 0)
                return -1;
            break;
        case '(':
            if (iv_push(marks, (int)st->n) < 0)
                return -1;
            break;
        case '}':
        case ']':
        case ')':
        case 0x8f:
            PUSH(1);
            vm->cost += C_CONTAINER;
            break;
        case 'h':
        case 'j':
        case 'g': {
            Py_ssize_t idx;
            if (op == 'g') {
                if (readline(vm, &p, &n) < 0 || parse_line_index(p, n, &idx) < 0)
                    return -1;
            } else {
                int w = op == 'h' ? 1 : 4;
                if (!(p = take(vm, w)))
                    return -1;
                idx = (Py_ssize_t)le_u(p, w);
            }
            if (idx >= memo->n)
                return malformed("memo key not found");
            PUSH(memo->v[idx]);
            break;
        }
        case 'q':
        case 'r':
        case 'p': {
            Py_ssize_t idx;
            if (op == 'p') {
                if (readline(vm, &p, &n) < 0 || parse_line_index(p, n, &idx) < 0)
                    return -1;
            } else {
                int w = op == 'q' ? 1 : 4;
                if (!(p = take(vm, w)))
                    return -1;
                idx = (Py_ssize_t)le_u(p, w);
            }
            if (!st->n)
                return malformed("PUT on an empty stack");
            if (idx < memo->n)
                memo->v[idx] = st->v[st->n - 1];
            else if (idx == memo->n) {
                if (iv_push(memo, st->v[st->n - 1]) < 0)
                    return -1;
            } else
                return limit_err("memo", PyUnicode_FromFormat("memo index %zd after %zd entries", idx, memo->n));
            break;
        }
        case 0x8c:
        case 'X':
        case 0x8d:
        case 'C':
        case 'B':
        case 0x8e:
        case 0x96:
        case 'U':
        case 'T': {
            int w = (op == 0x8c || op == 'C' || op == 'U') ? 1 : (op == 'X' || op == 'B' || op == 'T') ? 4 : 8;
            if (!(p = take(vm, w)))
                return -1;
            uint64_t un = le_u(p, w);
            if (op == 'T' && (int32_t)(uint32_t)un < 0)
                return malformed("negative byte count");
            if (un > (uint64_t)LEFT)
                return limit_err("bytes", PyUnicode_FromFormat("a string of %llu bytes", (unsigned long long)un));
            n = (Py_ssize_t)un;
            vm->cost += C_STR + n;
            if (op == 0x8c || op == 'X' || op == 0x8d || op == 'U' || op == 'T') { /* text: decoded as load does */
                if (!(p = take(vm, n)))
                    return -1;
                PyObject *o = (op == 'U' || op == 'T') ? PyUnicode_DecodeASCII(p, n, "strict")
                                                       : PyUnicode_DecodeUTF8(p, n, "surrogatepass");
                if (!o)
                    return -1;
                Py_DECREF(o);
                n = 0;
            }
            /* stream past bytes: at most a chunk is buffered */
            while (n > 0) {
                Py_ssize_t k = n < CHUNK ? n : CHUNK;
                if (!take(vm, k))
                    return -1;
                n -= k;
            }
            PUSH(0);
            if (un > (1 << 16) && scan_memory(vm, st, memo) < 0)
                return -1;
            break;
        }
        case 'J':
        case 'K':
        case 'M':
        case 'G':
            if (!take(vm, op == 'J' ? 4 : op == 'K' ? 1 : op == 'M' ? 2 : 8))
                return -1;
            PUSH(0);
            break;
        case 'a':
        case 'e':
        case 's':
        case 'u':
        case 0x90: {
            Py_ssize_t lo;
            if (op == 'a' || op == 's') {
                lo = st->n - (op == 'a' ? 1 : 2);
                if (lo < 1 || (marks->n && marks->v[marks->n - 1] > lo - 1))
                    return malformed(op == 'a' ? "APPEND without a list" : "SETITEM without a dict");
            } else {
                if (!marks->n)
                    return malformed("could not find MARK");
                lo = marks->v[--marks->n];
                if (lo > st->n)
                    return malformed("MARK above the stack");
                if (lo < 1)
                    return malformed("no container for APPENDS/SETITEMS");
            }
            if ((op == 's' || op == 'u') && (st->n - lo) % 2)
                return malformed("odd number of items for SETITEMS");
            if (st->n > lo) {
                int d = 0;
                for (Py_ssize_t i = lo; i < st->n; i++)
                    if (st->v[i] > d)
                        d = st->v[i];
                d += 1;
                if (d > st->v[lo - 1]) {
                    if (d > vm->max_depth)
                        return too_deep(vm);
                    st->v[lo - 1] = d;
                }
                vm->cost += (long long)C_ITEM * (st->n - lo);
            }
            st->n = lo;
            break;
        }
        case 0x85:
        case 0x86:
        case 0x87:
        case 't':
        case 'l':
        case 'd':
        case 0x91: {
            Py_ssize_t lo;
            if (op >= 0x85 && op <= 0x87) {
                lo = st->n - (op - 0x84);
                if (lo < 0 || (marks->n && marks->v[marks->n - 1] > lo))
                    return malformed("not enough values for TUPLEn");
            } else {
                if (!marks->n)
                    return malformed("could not find MARK");
                lo = marks->v[--marks->n];
                if (lo > st->n)
                    return malformed("MARK above the stack");
            }
            if (op == 'd' && (st->n - lo) % 2)
                return malformed("odd number of items for DICT");
            int d = 0;
            for (Py_ssize_t i = lo; i < st->n; i++)
                if (st->v[i] > d)
                    d = st->v[i];
            d += 1;
            if (d > vm->max_depth)
                return too_deep(vm);
            vm->cost += C_CONTAINER + (long long)C_ITEM * (st->n - lo);
            st->n = lo;
            PUSH(d);
            break;
        }
        case 0x95: { /* FRAME */
            if (!(p = take(vm, 8)))
                return -1;
            uint64_t fl = le_u(p, 8);
            if (fl > (uint64_t)LEFT)
                return limit_err("bytes", PyUnicode_FromFormat("a FRAME of %llu bytes", (unsigned long long)fl));
            if (vm->frame_end >= 0 && vm->base + vm->pos != vm->frame_end)
                return malformed("a FRAME inside a FRAME");
            if (fill(vm, (Py_ssize_t)fl) < 0)
                return -1;
            vm->frame_end = vm->base + vm->pos + (long long)fl;
            break;
        }
        case 0x80:
            if (!take(vm, 1))
                return -1;
            break;
        case 0x8a:
            if (!(p = take(vm, 1)))
                return -1;
            if (!take(vm, (unsigned char)*p))
                return -1;
            PUSH(0);
            break;
        case 0x8b: {
            if (!(p = take(vm, 4)))
                return -1;
            int32_t sn = (int32_t)(uint32_t)le_u(p, 4);
            if (sn < 0)
                return malformed("LONG pickle has negative byte count");
            if ((long long)sn > LEFT)
                return limit_err("bytes", PyUnicode_FromFormat("a LONG of %d bytes", (int)sn));
            if (!take(vm, sn))
                return -1;
            vm->cost += C_STR + sn;
            PUSH(0);
            break;
        }
        case '.':
            if (!st->n)
                return malformed("STOP on an empty stack");
            return scan_memory(vm, st, memo);
        case '0':
            if (marks->n && marks->v[marks->n - 1] == st->n)
                marks->n--;
            else if (st->n)
                st->n--;
            else
                return malformed("POP on an empty stack");
            break;
        case '1': {
            if (!marks->n)
                return malformed("could not find MARK");
            Py_ssize_t lo = marks->v[--marks->n];
            if (lo > st->n)
                return malformed("MARK above the stack");
            st->n = lo;
            break;
        }
        case '2':
            if (!st->n)
                return malformed("DUP on an empty stack");
            PUSH(st->v[st->n - 1]);
            break;
        case 'I':
        case 'L':
        case 'F':
        case 'S':
        case 'V':
            if (readline(vm, &p, &n) < 0)
                return -1;
            if (op == 'S' || op == 'V')
                vm->cost += C_STR + n;
            PUSH(0);
            break;
        case 'c':
            if (readline(vm, &p, &n) < 0 || readline(vm, &p, &n) < 0)
                return -1;
            PUSH(0);
            break;
        case 0x93:
            if (st->n < 2)
                return malformed("STACK_GLOBAL needs two values");
            st->n -= 2;
            PUSH(0);
            break;
        case 'R':
        case 0x81:
            if (st->n < 2)
                return malformed("REDUCE needs two values");
            st->v[st->n - 2] = st->v[st->n - 1];
            st->n--;
            vm->cost += C_CONTAINER;
            break;
        case 0x92: {
            if (st->n < 3)
                return malformed("NEWOBJ_EX needs three values");
            int d = st->v[st->n - 1] > st->v[st->n - 2] ? st->v[st->n - 1] : st->v[st->n - 2];
            st->n -= 3;
            PUSH(d);
            vm->cost += C_CONTAINER;
            break;
        }
        case 'b': {
            if (st->n < 2)
                return malformed("BUILD needs two values");
            int d = st->v[--st->n] + 1;
            if (d > vm->max_depth)
                return too_deep(vm);
            if (d > st->v[st->n - 1])
                st->v[st->n - 1] = d;
            break;
        }
        case 'i':
        case 'o': {
            if (op == 'i' && (readline(vm, &p, &n) < 0 || readline(vm, &p, &n) < 0))
                return -1;
            if (!marks->n)
                return malformed("could not find MARK");
            Py_ssize_t lo = marks->v[--marks->n];
            if (lo > st->n)
                return malformed("MARK above the stack");
            if (op == 'o' && lo == st->n)
                return malformed("OBJ without a class");
            int d = 0;
            for (Py_ssize_t i = lo; i < st->n; i++)
                if (st->v[i] > d)
                    d = st->v[i];
            st->n = lo;
            PUSH(d + 1);
            vm->cost += C_CONTAINER;
            break;
        }
        case 'P':
        case 'Q':
            return unsupported("refused a persistent id: a memory snapshot holds only plain data");
        case 0x82:
        case 0x83:
        case 0x84:
            return unsupported("refused an extension code: a memory snapshot holds only plain data");
        case 0x97:
        case 0x98:
            return unsupported("refused out-of-band buffers: a memory snapshot holds only plain data");
        default:
            PyErr_Format(Malformed, "invalid opcode 0x%02x", (unsigned)op);
            return -1;
        }
    }
#undef LEFT
#undef PUSH
}

static PyObject *fp_scan(PyObject *self, PyObject *args) {
    PyObject *file;
    long long max_bytes = 2LL << 30;
    int max_depth = 64;
    (void)self;
    if (!PyArg_ParseTuple(args, "O|Li:scan", &file, &max_bytes, &max_depth))
        return NULL;
    VM vm;
    memset(&vm, 0, sizeof(vm));
    vm.file = file;
    vm.max_bytes = max_bytes;
    vm.max_depth = max_depth;
    vm.frame_end = -1;
    IntVec st = {0}, marks = {0}, memo = {0};
    int rc = scan_run(&vm, &st, &marks, &memo);
    PyMem_Free(st.v);
    PyMem_Free(marks.v);
    PyMem_Free(memo.v);
    PyMem_Free(vm.buf);
    if (rc < 0) {
        normalise_error();
        return NULL;
    }
    return PyLong_FromLongLong(vm.base + vm.pos);
}

static PyMethodDef methods[] = {
    {"load", fp_load, METH_VARARGS,
     "load(file, actions) -> (root, fast, stacks, user_metadata_values)\n\n"
     "Read a snapshot pickle from file (an object with read(n)). When fast is True, "
     "root['device_traces'] is a list of per-device column dicts."},
    {"scan", fp_scan, METH_VARARGS,
     "scan(file, max_bytes, max_depth) -> bytes consumed\n\n"
     "Walk a pickle's opcodes without building anything; raise Limit, Malformed or Unsupported."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "memprof._fastpickle",
                                       "Streaming loader for PyTorch memory snapshot pickles.", -1, methods};

PyMODINIT_FUNC PyInit__fastpickle(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Unsupported = PyErr_NewExceptionWithDoc("memprof._fastpickle.Unsupported",
                                            "The file uses something this loader does not handle: use the pure loader.",
                                            PyExc_Exception, NULL);
    Malformed = PyErr_NewExceptionWithDoc("memprof._fastpickle.Malformed", "The file is truncated or corrupt.",
                                          PyExc_ValueError, NULL);
    Limit = PyErr_NewExceptionWithDoc("memprof._fastpickle.Limit",
                                      "The file asks for more than a limit allows: args (kind, detail).", PyExc_Exception,
                                      NULL);
    if (!Unsupported || !Malformed || !Limit || PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0 ||
        PyModule_AddObjectRef(m, "Malformed", Malformed) < 0 || PyModule_AddObjectRef(m, "Limit", Limit) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
