// `machine` for the firmware when it runs in the MicroPython unix port (`tukar sim --runtime
// micropython`, the end-to-end tests, the memory bench), in C as the ESP32 port's is: the ESP32
// port's classes, constants and errors, every call forwarded over a local socket to the host
// process, where the register-level chip models and the physics answer (tukar_tools/mprt.py serves
// it). The firmware cannot tell; and, as on the device, none of it takes MicroPython heap: the code
// is in the binary, Pin, ADC, WDT and the hardware I2C and SPI buses are static objects, a request
// and its reply live on the caller's C stack, the sockets are plain descriptors and the notes are
// read by a thread of its own (not a MicroPython thread).
//
// Built into the unix port as the user C module `_tukarhw` (tools/build/micropython.sh); the frozen
// mpshim/machine.py makes `import machine` this module. Its first import connects to $TUKAR_HW
// ("host:port") twice, requests then notes, and says HELLO.
//
// Wire: a request is <u16 length><u8 op><args>, a reply <u16 length><u8 status><data> (little
// endian; the length counts the op or status byte and what follows). Status 0 is success, 1 an
// OSError (its errno, u16, in the data), 2 a ValueError (its text). A request and a reply hold at
// most BUF bytes, the header included for a request and not for a reply (the firmware's largest
// transfer is an SBS block read, 34 bytes; an I2C scan, 112). The second socket carries the host's
// notes, two bytes each: ("I", pin) a pin edge for its IRQ handler, run as the port's soft IRQ
// (the scheduler); ("F", on) the flash fails (1) or works again (0): a file opened to write,
// append or update then raises OSError(EIO); ("M", 0) a heap probe: gc.collect(), then
// "tukar-heap: used=%d free=%d" and micropython.mem_info()'s lines, which mprt.py reads.
// A file opened to write, append or update (a flash write) is first told to the host, FLASH_WRITE
// with the path (at most BUF - 3 bytes of it), and opened only once the host has answered: the
// crash-point harness (tukar_tools/crashpoints.py) cuts the power there, before the write.

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "py/builtin.h"
#include "py/gc.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "py/mpthread.h"
#include "py/objlist.h"
#include "py/objmodule.h"
#include "py/runtime.h"

#if !MICROPY_ENABLE_SCHEDULER
#error "_tukarhw runs pin handlers and heap probes through the scheduler"
#endif

#define BUF (128)
#define N_PINS (256) // a pin's id travels as one byte
#define N_BUSES (4) // hardware I2C and SPI buses with a static object (the ESP32 has two of each)

enum {
    OP_PIN_INIT = 1, OP_PIN_GET = 2, OP_PIN_SET = 3, OP_PIN_IRQ = 4,
    OP_I2C_NEW = 10, OP_I2C_RMEM = 11, OP_I2C_WMEM = 12, OP_I2C_READ = 13, OP_I2C_WRITE = 14,
    OP_I2C_SCAN = 15, OP_I2C_INIT = 16,
    OP_SPI_INIT = 20, OP_SPI_XFER = 21,
    OP_ADC_INIT = 30, OP_ADC_READ = 31,
    OP_WDT_INIT = 40, OP_WDT_FEED = 41,
    OP_CAUSE = 50, OP_UID = 51, OP_RESET = 52, OP_HELLO = 53,
    OP_FLASH_WRITE = 60,
};

// -- the link to the host -------------------------------------------------------------------------
static int rpc_fd = -1;
static int note_fd = -1;
static bool started;
// One request at a time: the firmware calls from two threads (its control loop and its link).
static pthread_mutex_t rpc_mutex = PTHREAD_MUTEX_INITIALIZER;
static volatile int flash_broken; // set by the notes thread, read by open()

#define ERR_CLOSED (-1)
#define ERR_TOO_BIG (-2)

static int send_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        p += k;
        n -= k;
    }
    return 0;
}

static int recv_all(int fd, uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        if (k == 0) {
            return ERR_CLOSED;
        }
        p += k;
        n -= k;
    }
    return 0;
}

static MP_NORETURN void raise_closed(void) {
    mp_raise_msg(&mp_type_SystemExit, MP_ERROR_TEXT("tukar: the host's hardware socket closed"));
}

// Sends buf[3:3 + n] as `op` and returns the reply's data length; the data is then in buf[0:].
// `buf` (BUF bytes) is the caller's, on its C stack. The GIL is let go while the socket is used
// (another thread runs meanwhile), and taken again before anything touches an object.
static size_t hw_call(uint8_t op, uint8_t *buf, size_t n) {
    buf[0] = (n + 1) & 0xff;
    buf[1] = (n + 1) >> 8;
    buf[2] = op;
    int err;
    int size = 0;
    uint8_t status = 0;
    MP_THREAD_GIL_EXIT();
    pthread_mutex_lock(&rpc_mutex);
    err = send_all(rpc_fd, buf, n + 3);
    if (err == 0) {
        err = recv_all(rpc_fd, buf, 3);
    }
    if (err == 0) {
        size = (buf[0] | (buf[1] << 8)) - 1;
        status = buf[2];
        err = size < 0 || size > BUF ? ERR_TOO_BIG : recv_all(rpc_fd, buf, size);
    }
    pthread_mutex_unlock(&rpc_mutex);
    MP_THREAD_GIL_ENTER();
    if (err == ERR_CLOSED) {
        raise_closed();
    }
    if (err == ERR_TOO_BIG) {
        mp_raise_msg_varg(&mp_type_SystemExit,
            MP_ERROR_TEXT("tukar: a machine reply of %d bytes (at most %d)"), size, BUF);
    }
    if (err != 0) {
        mp_raise_OSError(err);
    }
    if (status == 1) {
        mp_raise_OSError(size >= 2 ? buf[0] | (buf[1] << 8) : MP_EIO);
    }
    if (status == 2) {
        mp_obj_t text = mp_obj_new_str((const char *)buf, size);
        nlr_raise(mp_obj_new_exception_arg1(&mp_type_ValueError, text));
    }
    return size;
}

static MP_NORETURN void too_big(size_t n, size_t at) {
    mp_raise_msg_varg(&mp_type_ValueError,
        MP_ERROR_TEXT("a transfer of %d bytes (this machine takes at most %d)"),
        (int)n, (int)(BUF - at));
}

// A transfer's data into buf at `at`; returns the request's argument length (its end - 3).
static size_t put_data(uint8_t *buf, size_t at, const void *data, size_t n) {
    if (at + n > BUF) {
        too_big(n, at);
    }
    memcpy(buf + at, data, n);
    return at + n - 3;
}

static void put_u16(uint8_t *p, uint32_t v) {
    p[0] = v;
    p[1] = v >> 8;
}

static void put_u32(uint8_t *p, uint32_t v) {
    put_u16(p, v);
    put_u16(p + 2, v >> 16);
}

static uint8_t int_byte(mp_obj_t o) {
    return mp_obj_get_int_truncated(o) & 0xff; // as struct.pack_into stores it
}

// bytes of length `want`: the reply's `got` bytes, zeros after them.
static mp_obj_t reply_bytes(uint8_t *buf, size_t got, size_t want) {
    if (want <= BUF) {
        if (got < want) {
            memset(buf + got, 0, want - got);
        }
        return mp_obj_new_bytes(buf, want);
    }
    vstr_t v;
    vstr_init_len(&v, want);
    memset(v.buf, 0, want);
    memcpy(v.buf, buf, got < want ? got : want);
    return mp_obj_new_bytes_from_vstr(&v);
}

// The reply's data into a writable buffer, as `buf[:n] = data`.
static void reply_into(mp_obj_t dest, const uint8_t *buf, size_t got) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(dest, &bi, MP_BUFFER_WRITE);
    memcpy(bi.buf, buf, got < bi.len ? got : bi.len);
}

// A keyword argument not in `allowed` is a TypeError, with the text the Python stand-in gave and
// MicroPython gives for a Python function (the ports' C functions say "extra keyword arguments
// given").
static void check_kw(mp_map_t *kw, const mp_arg_t *allowed, size_t n) {
    for (size_t i = 0; i < kw->alloc; i++) {
        if (!mp_map_slot_is_filled(kw, i)) {
            continue;
        }
        qstr k = mp_obj_str_get_qstr(kw->table[i].key);
        size_t j = 0;
        while (j < n && allowed[j].qst != k) {
            j++;
        }
        if (j == n) {
            mp_raise_msg_varg(&mp_type_TypeError,
                MP_ERROR_TEXT("unexpected keyword argument '%q'"), k);
        }
    }
}

static void parse(size_t n_pos, const mp_obj_t *pos, mp_map_t *kw, size_t n,
    const mp_arg_t *allowed, mp_arg_val_t *out) {
    check_kw(kw, allowed, n);
    mp_arg_parse_all(n_pos, pos, kw, n, allowed, out);
}

extern const mp_obj_dict_t tukarhw_module_globals;

// -- Pin ------------------------------------------------------------------------------------------
typedef struct {
    mp_obj_base_t base;
    uint8_t id;
} pin_obj_t;

static pin_obj_t pins[N_PINS]; // static, as the ESP32 port's: Pin(n) is Pin(n)
extern const mp_obj_type_t tukarhw_pin_type;

static int pin_id(mp_obj_t p) {
    if (mp_obj_is_type(p, &tukarhw_pin_type)) {
        return ((pin_obj_t *)MP_OBJ_TO_PTR(p))->id;
    }
    if (mp_obj_is_int(p) || mp_obj_is_bool(p)) {
        return mp_obj_get_int_truncated(p);
    }
    mp_raise_TypeError(MP_ERROR_TEXT("pin must be a Pin or an int"));
}

static pin_obj_t *pin_obj(mp_int_t id) {
    if (id < 0 || id >= N_PINS) {
        mp_raise_ValueError(MP_ERROR_TEXT("invalid pin"));
    }
    return &pins[id];
}

enum { PIN_ARG_MODE, PIN_ARG_PULL, PIN_ARG_VALUE, PIN_ARG_DRIVE, PIN_ARG_HOLD };
static const mp_arg_t pin_init_args[] = {
    { MP_QSTR_mode, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(-1)} },
    { MP_QSTR_pull, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(-1)} },
    { MP_QSTR_value, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    { MP_QSTR_drive, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    { MP_QSTR_hold, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
};

// mode None: unchanged (-1); pull None: none (-2), -1 unchanged; value None: not driven (255).
static void pin_send_init(pin_obj_t *self, const mp_arg_val_t *a) {
    uint8_t buf[BUF];
    buf[3] = self->id;
    buf[4] = a[PIN_ARG_MODE].u_obj == mp_const_none ? 0xff : int_byte(a[PIN_ARG_MODE].u_obj);
    buf[5] = a[PIN_ARG_PULL].u_obj == mp_const_none ? 0xfe : int_byte(a[PIN_ARG_PULL].u_obj);
    mp_obj_t value = a[PIN_ARG_VALUE].u_obj;
    buf[6] = value == mp_const_none ? 0xff : mp_obj_is_true(value);
    hw_call(OP_PIN_INIT, buf, 4);
}

// Pin(id, mode=-1, pull=-1, value=None, *, drive, hold): value may come by position too.
static mp_obj_t pin_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, 4, true);
    pin_obj_t *self = pin_obj(mp_obj_get_int(args[0]));
    mp_arg_t allowed[MP_ARRAY_SIZE(pin_init_args)];
    memcpy(allowed, pin_init_args, sizeof(allowed));
    allowed[PIN_ARG_VALUE].flags = MP_ARG_OBJ;
    mp_arg_val_t a[MP_ARRAY_SIZE(pin_init_args)];
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    parse(n_args - 1, args + 1, &kw, MP_ARRAY_SIZE(allowed), allowed, a);
    pin_send_init(self, a);
    return MP_OBJ_FROM_PTR(self);
}

static mp_obj_t pin_init(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    mp_arg_val_t a[MP_ARRAY_SIZE(pin_init_args)];
    parse(n_args - 1, args + 1, kw, MP_ARRAY_SIZE(pin_init_args), pin_init_args, a);
    pin_send_init(MP_OBJ_TO_PTR(args[0]), a);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(pin_init_obj, 1, pin_init);

static mp_obj_t pin_value_(pin_obj_t *self, mp_obj_t x) {
    uint8_t buf[BUF];
    buf[3] = self->id;
    if (x == mp_const_none) {
        hw_call(OP_PIN_GET, buf, 1);
        return MP_OBJ_NEW_SMALL_INT(buf[0]);
    }
    buf[4] = mp_obj_is_true(x);
    hw_call(OP_PIN_SET, buf, 2);
    return mp_const_none;
}

static mp_obj_t pin_value(size_t n_args, const mp_obj_t *args) {
    return pin_value_(MP_OBJ_TO_PTR(args[0]), n_args > 1 ? args[1] : mp_const_none);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(pin_value_obj, 1, 2, pin_value);

static mp_obj_t pin_call(mp_obj_t self, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 0, 1, false);
    return pin_value_(MP_OBJ_TO_PTR(self), n_args ? args[0] : mp_const_none);
}

static mp_obj_t pin_on(mp_obj_t self) {
    return pin_value_(MP_OBJ_TO_PTR(self), mp_const_true);
}
static MP_DEFINE_CONST_FUN_OBJ_1(pin_on_obj, pin_on);

static mp_obj_t pin_off(mp_obj_t self) {
    return pin_value_(MP_OBJ_TO_PTR(self), mp_const_false);
}
static MP_DEFINE_CONST_FUN_OBJ_1(pin_off_obj, pin_off);

// irq(handler=None, trigger=3, wake=None, hard=False): the handler, kept in a GC root, runs as a
// soft IRQ (scheduled) with this Pin when the host notes an edge; no handler turns the edges off.
static mp_obj_t pin_irq(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    static const mp_arg_t allowed[] = {
        { MP_QSTR_handler, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_trigger, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(3)} },
        { MP_QSTR_wake, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_hard, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_FALSE} },
    };
    mp_arg_val_t a[MP_ARRAY_SIZE(allowed)];
    parse(n_args - 1, args + 1, kw, MP_ARRAY_SIZE(allowed), allowed, a);
    pin_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    mp_obj_t handler = a[0].u_obj;
    MP_STATE_VM(tukarhw_pin_irq)[self->id] = handler;
    uint8_t buf[BUF];
    buf[3] = self->id;
    buf[4] = handler == mp_const_none ? 0 : int_byte(a[1].u_obj);
    hw_call(OP_PIN_IRQ, buf, 2);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(pin_irq_obj, 1, pin_irq);

static void pin_print(const mp_print_t *print, mp_obj_t self, mp_print_kind_t kind) {
    mp_printf(print, "Pin(%u)", ((pin_obj_t *)MP_OBJ_TO_PTR(self))->id);
}

static const mp_rom_map_elem_t pin_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_init), MP_ROM_PTR(&pin_init_obj) },
    { MP_ROM_QSTR(MP_QSTR_value), MP_ROM_PTR(&pin_value_obj) },
    { MP_ROM_QSTR(MP_QSTR_on), MP_ROM_PTR(&pin_on_obj) },
    { MP_ROM_QSTR(MP_QSTR_off), MP_ROM_PTR(&pin_off_obj) },
    { MP_ROM_QSTR(MP_QSTR_irq), MP_ROM_PTR(&pin_irq_obj) },
    { MP_ROM_QSTR(MP_QSTR_IN), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_OUT), MP_ROM_INT(3) },
    { MP_ROM_QSTR(MP_QSTR_OPEN_DRAIN), MP_ROM_INT(7) },
    { MP_ROM_QSTR(MP_QSTR_PULL_DOWN), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_PULL_UP), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_PULL_HOLD), MP_ROM_INT(4) },
    { MP_ROM_QSTR(MP_QSTR_IRQ_RISING), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_IRQ_FALLING), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_WAKE_LOW), MP_ROM_INT(4) },
    { MP_ROM_QSTR(MP_QSTR_WAKE_HIGH), MP_ROM_INT(5) },
    { MP_ROM_QSTR(MP_QSTR_DRIVE_0), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_DRIVE_1), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_DRIVE_2), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_DRIVE_3), MP_ROM_INT(3) },
};
static MP_DEFINE_CONST_DICT(pin_locals, pin_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tukarhw_pin_type,
    MP_QSTR_Pin,
    MP_TYPE_FLAG_NONE,
    make_new, pin_make_new,
    print, pin_print,
    call, pin_call,
    locals_dict, &pin_locals
    );

// -- I2C and SoftI2C ------------------------------------------------------------------------------
typedef struct {
    mp_obj_base_t base;
    uint8_t id; // the bus as the host knows it: 0 and 1 the hardware buses, 255 a SoftI2C
} bus_obj_t;

static bus_obj_t i2c_buses[N_BUSES];
static bus_obj_t spi_buses[N_BUSES];
extern const mp_obj_type_t tukarhw_i2c_type;
extern const mp_obj_type_t tukarhw_soft_i2c_type;
extern const mp_obj_type_t tukarhw_spi_type;

// The bus object for `id`: static for a hardware bus, as on the ESP32; made on the heap otherwise.
static mp_obj_t bus_obj(bus_obj_t *table, const mp_obj_type_t *type, uint8_t id) {
    bus_obj_t *self = table != NULL && id < N_BUSES ? &table[id] : mp_obj_malloc(bus_obj_t, type);
    self->base.type = type;
    self->id = id;
    return MP_OBJ_FROM_PTR(self);
}

enum { I2C_ARG_SCL, I2C_ARG_SDA, I2C_ARG_FREQ, I2C_ARG_TIMEOUT };

// I2C_NEW or I2C_INIT: "<BbbII" id, scl, sda (-1: none), freq, timeout.
static void i2c_send(uint8_t op, uint8_t id, const mp_arg_val_t *a) {
    uint8_t buf[BUF];
    buf[3] = id;
    buf[4] = a[I2C_ARG_SCL].u_obj == mp_const_none ? 0xff : pin_id(a[I2C_ARG_SCL].u_obj);
    buf[5] = a[I2C_ARG_SDA].u_obj == mp_const_none ? 0xff : pin_id(a[I2C_ARG_SDA].u_obj);
    put_u32(buf + 6, mp_obj_get_int_truncated(a[I2C_ARG_FREQ].u_obj));
    put_u32(buf + 10, mp_obj_get_int_truncated(a[I2C_ARG_TIMEOUT].u_obj));
    hw_call(op, buf, 11);
}

#define I2C_KW_ARGS(flags) \
    { MP_QSTR_scl, flags | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} }, \
    { MP_QSTR_sda, flags | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} }, \
    { MP_QSTR_freq, flags | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(400000)} }, \
    { MP_QSTR_timeout, flags | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(50000)} }

// I2C(id=0, *, scl=None, sda=None, freq=400000, timeout=50000)
static mp_obj_t i2c_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    static const mp_arg_t allowed[] = {
        { MP_QSTR_id, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(0)} },
        I2C_KW_ARGS(MP_ARG_KW_ONLY),
    };
    mp_arg_val_t a[MP_ARRAY_SIZE(allowed)];
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    parse(n_args, args, &kw, MP_ARRAY_SIZE(allowed), allowed, a);
    uint8_t id = int_byte(a[0].u_obj);
    i2c_send(OP_I2C_NEW, id, a + 1);
    return bus_obj(i2c_buses, &tukarhw_i2c_type, id);
}

// SoftI2C(scl, sda, *, freq=400000, timeout=50000): bus 255, which the host finds by its pins.
static mp_obj_t soft_i2c_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    static const mp_arg_t allowed[] = {
        { MP_QSTR_scl, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_sda, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_freq, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(400000)} },
        { MP_QSTR_timeout, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(50000)} },
    };
    mp_arg_val_t a[MP_ARRAY_SIZE(allowed)];
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    parse(n_args, args, &kw, MP_ARRAY_SIZE(allowed), allowed, a);
    i2c_send(OP_I2C_NEW, 255, a);
    return bus_obj(NULL, &tukarhw_soft_i2c_type, 255);
}

// init(scl=None, sda=None, freq=400000, timeout=50000): the ESP32's hardware I2C raises OSError
// here (the host says so); a SoftI2C is configured afresh.
static mp_obj_t i2c_init(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    static const mp_arg_t allowed[] = { I2C_KW_ARGS(0) };
    mp_arg_val_t a[MP_ARRAY_SIZE(allowed)];
    parse(n_args - 1, args + 1, kw, MP_ARRAY_SIZE(allowed), allowed, a);
    i2c_send(OP_I2C_INIT, ((bus_obj_t *)MP_OBJ_TO_PTR(args[0]))->id, a);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(i2c_init_obj, 1, i2c_init);

static uint8_t bus_id(mp_obj_t self) {
    return ((bus_obj_t *)MP_OBJ_TO_PTR(self))->id;
}

static const mp_arg_t addrsize_arg[] = {
    { MP_QSTR_addrsize, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(8)} },
};

static uint8_t addrsize(mp_map_t *kw) {
    mp_arg_val_t a[1];
    parse(0, NULL, kw, 1, addrsize_arg, a);
    return int_byte(a[0].u_obj);
}

// I2C_RMEM "<BBIBH": id, addr, memaddr, addrsize, n; returns the reply's length.
static size_t i2c_rmem(uint8_t *buf, const mp_obj_t *args, size_t n, mp_map_t *kw) {
    buf[3] = bus_id(args[0]);
    buf[4] = int_byte(args[1]);
    put_u32(buf + 5, mp_obj_get_int_truncated(args[2]));
    buf[9] = addrsize(kw);
    put_u16(buf + 10, n);
    return hw_call(OP_I2C_RMEM, buf, 9);
}

// readfrom_mem_into(addr, memaddr, buf, *, addrsize=8)
static mp_obj_t i2c_readfrom_mem_into(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    mp_arg_check_num(n_args - 1, 0, 3, 3, false);
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[3], &bi, MP_BUFFER_WRITE);
    uint8_t buf[BUF];
    reply_into(args[3], buf, i2c_rmem(buf, args, bi.len, kw));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(i2c_readfrom_mem_into_obj, 4, i2c_readfrom_mem_into);

// readfrom_mem(addr, memaddr, nbytes, *, addrsize=8) -> bytes
static mp_obj_t i2c_readfrom_mem(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    mp_arg_check_num(n_args - 1, 0, 3, 3, false);
    mp_int_t n = mp_obj_get_int(args[3]);
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative count"));
    }
    uint8_t buf[BUF];
    return reply_bytes(buf, i2c_rmem(buf, args, n, kw), n);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(i2c_readfrom_mem_obj, 4, i2c_readfrom_mem);

// writeto_mem(addr, memaddr, buf, *, addrsize=8): "<BBIB" then the data.
static mp_obj_t i2c_writeto_mem(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    mp_arg_check_num(n_args - 1, 0, 3, 3, false);
    uint8_t buf[BUF];
    buf[3] = bus_id(args[0]);
    buf[4] = int_byte(args[1]);
    put_u32(buf + 5, mp_obj_get_int_truncated(args[2]));
    buf[9] = addrsize(kw);
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[3], &bi, MP_BUFFER_READ);
    hw_call(OP_I2C_WMEM, buf, put_data(buf, 10, bi.buf, bi.len));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(i2c_writeto_mem_obj, 4, i2c_writeto_mem);

static bool stop_arg(size_t n_args, const mp_obj_t *args, size_t i) {
    return n_args > i ? mp_obj_is_true(args[i]) : true;
}

// I2C_READ "<BBBH": id, addr, stop, n; returns the reply's length.
static size_t i2c_read(uint8_t *buf, size_t n_args, const mp_obj_t *args, size_t n) {
    buf[3] = bus_id(args[0]);
    buf[4] = int_byte(args[1]);
    buf[5] = stop_arg(n_args, args, 3);
    put_u16(buf + 6, n);
    return hw_call(OP_I2C_READ, buf, 5);
}

// readfrom_into(addr, buf, stop=True)
static mp_obj_t i2c_readfrom_into(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[2], &bi, MP_BUFFER_WRITE);
    uint8_t buf[BUF];
    reply_into(args[2], buf, i2c_read(buf, n_args, args, bi.len));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(i2c_readfrom_into_obj, 3, 4, i2c_readfrom_into);

// readfrom(addr, nbytes, stop=True) -> bytes
static mp_obj_t i2c_readfrom(size_t n_args, const mp_obj_t *args) {
    mp_int_t n = mp_obj_get_int(args[2]);
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative count"));
    }
    uint8_t buf[BUF];
    return reply_bytes(buf, i2c_read(buf, n_args, args, n), n);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(i2c_readfrom_obj, 3, 4, i2c_readfrom);

// I2C_WRITE "<BBB" id, addr, stop, then buf[6:6 + data]; returns the number of bytes acked.
static mp_obj_t i2c_write(uint8_t *buf, size_t n_args, const mp_obj_t *args, size_t n) {
    buf[3] = bus_id(args[0]);
    buf[4] = int_byte(args[1]);
    buf[5] = stop_arg(n_args, args, 3);
    size_t got = hw_call(OP_I2C_WRITE, buf, n);
    return MP_OBJ_NEW_SMALL_INT(got ? buf[0] : 0);
}

// writeto(addr, buf, stop=True) -> the number of bytes acked
static mp_obj_t i2c_writeto(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[2], &bi, MP_BUFFER_READ);
    uint8_t buf[BUF];
    return i2c_write(buf, n_args, args, put_data(buf, 6, bi.buf, bi.len));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(i2c_writeto_obj, 3, 4, i2c_writeto);

// writevto(addr, vector, stop=True): the buffers of `vector` as one write.
static mp_obj_t i2c_writevto(size_t n_args, const mp_obj_t *args) {
    uint8_t buf[BUF];
    size_t n = 0;
    mp_obj_iter_buf_t iter_buf;
    mp_obj_t iter = mp_getiter(args[2], &iter_buf);
    mp_obj_t item;
    while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
        mp_buffer_info_t bi;
        mp_get_buffer_raise(item, &bi, MP_BUFFER_READ);
        if (6 + n + bi.len <= BUF) {
            memcpy(buf + 6 + n, bi.buf, bi.len);
        }
        n += bi.len;
    }
    if (6 + n > BUF) {
        too_big(n, 6);
    }
    return i2c_write(buf, n_args, args, n + 3);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(i2c_writevto_obj, 3, 4, i2c_writevto);

static mp_obj_t i2c_scan(mp_obj_t self) {
    uint8_t buf[BUF];
    buf[3] = bus_id(self);
    size_t n = hw_call(OP_I2C_SCAN, buf, 1);
    mp_obj_list_t *list = MP_OBJ_TO_PTR(mp_obj_new_list(n, NULL));
    for (size_t i = 0; i < n; i++) {
        list->items[i] = MP_OBJ_NEW_SMALL_INT(buf[i]);
    }
    return MP_OBJ_FROM_PTR(list);
}
static MP_DEFINE_CONST_FUN_OBJ_1(i2c_scan_obj, i2c_scan);

static const mp_rom_map_elem_t i2c_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_init), MP_ROM_PTR(&i2c_init_obj) },
    { MP_ROM_QSTR(MP_QSTR_readfrom_mem_into), MP_ROM_PTR(&i2c_readfrom_mem_into_obj) },
    { MP_ROM_QSTR(MP_QSTR_readfrom_mem), MP_ROM_PTR(&i2c_readfrom_mem_obj) },
    { MP_ROM_QSTR(MP_QSTR_writeto_mem), MP_ROM_PTR(&i2c_writeto_mem_obj) },
    { MP_ROM_QSTR(MP_QSTR_readfrom_into), MP_ROM_PTR(&i2c_readfrom_into_obj) },
    { MP_ROM_QSTR(MP_QSTR_readfrom), MP_ROM_PTR(&i2c_readfrom_obj) },
    { MP_ROM_QSTR(MP_QSTR_writeto), MP_ROM_PTR(&i2c_writeto_obj) },
    { MP_ROM_QSTR(MP_QSTR_writevto), MP_ROM_PTR(&i2c_writevto_obj) },
    { MP_ROM_QSTR(MP_QSTR_scan), MP_ROM_PTR(&i2c_scan_obj) },
};
static MP_DEFINE_CONST_DICT(i2c_locals, i2c_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tukarhw_i2c_type,
    MP_QSTR_I2C,
    MP_TYPE_FLAG_NONE,
    make_new, i2c_make_new,
    locals_dict, &i2c_locals
    );

// A subclass of I2C (isinstance), with I2C's methods.
MP_DEFINE_CONST_OBJ_TYPE(
    tukarhw_soft_i2c_type,
    MP_QSTR_SoftI2C,
    MP_TYPE_FLAG_NONE,
    make_new, soft_i2c_make_new,
    parent, &tukarhw_i2c_type,
    locals_dict, &i2c_locals
    );

// -- SPI ------------------------------------------------------------------------------------------
// init(baudrate=500000, *, polarity, phase, bits=8, firstbit, sck, mosi, miso): only bits matters
// to the host, which models 8-bit transfers; "<BI" id, baudrate.
static const mp_arg_t spi_args[] = {
    { MP_QSTR_id, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(1)} },
    { MP_QSTR_baudrate, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(500000)} },
    { MP_QSTR_polarity, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(0)} },
    { MP_QSTR_phase, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(0)} },
    { MP_QSTR_bits, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(8)} },
    { MP_QSTR_firstbit, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(0)} },
    { MP_QSTR_sck, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    { MP_QSTR_mosi, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    { MP_QSTR_miso, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
};

static void spi_send_init(uint8_t id, const mp_arg_val_t *a) {
    if (!mp_obj_equal(a[4].u_obj, MP_OBJ_NEW_SMALL_INT(8))) {
        mp_raise_ValueError(MP_ERROR_TEXT("only 8-bit transfers are modelled"));
    }
    uint8_t buf[BUF];
    buf[3] = id;
    put_u32(buf + 4, mp_obj_get_int_truncated(a[1].u_obj));
    hw_call(OP_SPI_INIT, buf, 5);
}

// SPI(id=1, baudrate=500000, **kw) as init()
static mp_obj_t spi_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_val_t a[MP_ARRAY_SIZE(spi_args)];
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    parse(n_args, args, &kw, MP_ARRAY_SIZE(spi_args), spi_args, a);
    uint8_t id = int_byte(a[0].u_obj);
    spi_send_init(id, a);
    return bus_obj(spi_buses, &tukarhw_spi_type, id);
}

static mp_obj_t spi_init(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    mp_arg_val_t a[MP_ARRAY_SIZE(spi_args)];
    // the arguments after self are spi_args without the id
    parse(n_args - 1, args + 1, kw, MP_ARRAY_SIZE(spi_args) - 1, spi_args + 1, a + 1);
    spi_send_init(bus_id(args[0]), a);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(spi_init_obj, 1, spi_init);

static mp_obj_t spi_deinit(mp_obj_t self) {
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(spi_deinit_obj, spi_deinit);

// SPI_XFER: id, then the bytes out; the reply is the bytes in.
static size_t spi_xfer(uint8_t *buf, mp_obj_t self, mp_obj_t data) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(data, &bi, MP_BUFFER_READ);
    size_t n = put_data(buf, 4, bi.buf, bi.len);
    buf[3] = bus_id(self);
    return hw_call(OP_SPI_XFER, buf, n);
}

static mp_obj_t spi_write(mp_obj_t self, mp_obj_t data) {
    uint8_t buf[BUF];
    spi_xfer(buf, self, data);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(spi_write_obj, spi_write);

// `n` bytes of `write` out; returns the reply's length.
static size_t spi_read(uint8_t *buf, const mp_obj_t *args, size_t n_args, mp_int_t n) {
    if (n + 4 > BUF) {
        too_big(n, 4);
    }
    memset(buf + 4, n_args > 2 ? int_byte(args[2]) : 0, n > 0 ? n : 0);
    buf[3] = bus_id(args[0]);
    return hw_call(OP_SPI_XFER, buf, n > 0 ? n + 1 : 1);
}

// readinto(buf, write=0x00)
static mp_obj_t spi_readinto(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[1], &bi, MP_BUFFER_WRITE);
    uint8_t buf[BUF];
    reply_into(args[1], buf, spi_read(buf, args, n_args, bi.len));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(spi_readinto_obj, 2, 3, spi_readinto);

// read(nbytes, write=0x00) -> bytes
static mp_obj_t spi_read_(size_t n_args, const mp_obj_t *args) {
    mp_int_t n = mp_obj_get_int(args[1]);
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative count"));
    }
    uint8_t buf[BUF];
    return reply_bytes(buf, spi_read(buf, args, n_args, n), n);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(spi_read_obj, 2, 3, spi_read_);

static mp_obj_t spi_write_readinto(mp_obj_t self, mp_obj_t wbuf, mp_obj_t rbuf) {
    mp_buffer_info_t w, r;
    mp_get_buffer_raise(wbuf, &w, MP_BUFFER_READ);
    mp_get_buffer_raise(rbuf, &r, MP_BUFFER_WRITE);
    if (w.len != r.len) {
        mp_raise_ValueError(MP_ERROR_TEXT("buffers must be the same length"));
    }
    uint8_t buf[BUF];
    reply_into(rbuf, buf, spi_xfer(buf, self, wbuf));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_3(spi_write_readinto_obj, spi_write_readinto);

static const mp_rom_map_elem_t spi_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_init), MP_ROM_PTR(&spi_init_obj) },
    { MP_ROM_QSTR(MP_QSTR_deinit), MP_ROM_PTR(&spi_deinit_obj) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&spi_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_readinto), MP_ROM_PTR(&spi_readinto_obj) },
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&spi_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_write_readinto), MP_ROM_PTR(&spi_write_readinto_obj) },
    { MP_ROM_QSTR(MP_QSTR_CONTROLLER), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_MASTER), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_MSB), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_LSB), MP_ROM_INT(1) },
};
static MP_DEFINE_CONST_DICT(spi_locals, spi_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tukarhw_spi_type,
    MP_QSTR_SPI,
    MP_TYPE_FLAG_NONE,
    make_new, spi_make_new,
    locals_dict, &spi_locals
    );

// -- ADC ------------------------------------------------------------------------------------------
typedef struct {
    mp_obj_base_t base;
    uint8_t id;
    mp_int_t bits; // what read() returns: 9 + width(), 12 until width() is called
} adc_obj_t;

static adc_obj_t adcs[N_PINS]; // static, one per pin, as the ESP32 port's channels
extern const mp_obj_type_t tukarhw_adc_type;

static const mp_arg_t adc_atten_arg[] = {
    { MP_QSTR_atten, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
};

// init(*, atten=None): ADC_INIT id, atten (None: 0)
static void adc_send_init(adc_obj_t *self, size_t n_pos, const mp_obj_t *pos, mp_map_t *kw) {
    mp_arg_val_t a[1];
    parse(n_pos, pos, kw, 1, adc_atten_arg, a);
    uint8_t buf[BUF];
    buf[3] = self->id;
    buf[4] = a[0].u_obj == mp_const_none ? 0 : int_byte(a[0].u_obj);
    hw_call(OP_ADC_INIT, buf, 2);
}

// ADC(pin, *, atten=None)
static mp_obj_t adc_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, 1, true);
    int id = pin_id(args[0]);
    pin_obj(id); // the same range as a Pin's
    adc_obj_t *self = &adcs[id];
    self->base.type = &tukarhw_adc_type;
    self->id = id;
    self->bits = 12;
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    adc_send_init(self, 0, NULL, &kw);
    return MP_OBJ_FROM_PTR(self);
}

static mp_obj_t adc_init(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    adc_send_init(MP_OBJ_TO_PTR(args[0]), n_args - 1, args + 1, kw);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(adc_init_obj, 1, adc_init);

static mp_obj_t adc_atten(mp_obj_t self, mp_obj_t atten) {
    mp_map_elem_t elem = { MP_OBJ_NEW_QSTR(MP_QSTR_atten), atten };
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, 1, (const mp_obj_t *)&elem);
    adc_send_init(MP_OBJ_TO_PTR(self), 0, NULL, &kw);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(adc_atten_obj, adc_atten);

static mp_obj_t adc_width(mp_obj_t self, mp_obj_t width) {
    ((adc_obj_t *)MP_OBJ_TO_PTR(self))->bits = 9 + mp_obj_get_int(width);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(adc_width_obj, adc_width);

// ADC_READ id, kind (0 raw at 12 bits, 1 u16, 2 microvolts); the reply a u32.
static uint32_t adc_read_(mp_obj_t self_in, uint8_t kind) {
    uint8_t buf[BUF];
    buf[3] = ((adc_obj_t *)MP_OBJ_TO_PTR(self_in))->id;
    buf[4] = kind;
    size_t n = hw_call(OP_ADC_READ, buf, 2);
    if (n < 4) {
        memset(buf + n, 0, 4 - n);
    }
    return buf[0] | (buf[1] << 8) | (buf[2] << 16) | ((uint32_t)buf[3] << 24);
}

static mp_obj_t adc_read(mp_obj_t self_in) {
    adc_obj_t *self = MP_OBJ_TO_PTR(self_in);
    uint32_t v = adc_read_(self_in, 0);
    mp_int_t shift = 12 - self->bits;
    if (shift < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative shift count"));
    }
    return mp_obj_new_int_from_uint(shift >= 32 ? 0 : v >> shift);
}
static MP_DEFINE_CONST_FUN_OBJ_1(adc_read_obj, adc_read);

static mp_obj_t adc_read_u16(mp_obj_t self) {
    return mp_obj_new_int_from_uint(adc_read_(self, 1));
}
static MP_DEFINE_CONST_FUN_OBJ_1(adc_read_u16_obj, adc_read_u16);

static mp_obj_t adc_read_uv(mp_obj_t self) {
    return mp_obj_new_int_from_uint(adc_read_(self, 2));
}
static MP_DEFINE_CONST_FUN_OBJ_1(adc_read_uv_obj, adc_read_uv);

static const mp_rom_map_elem_t adc_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_init), MP_ROM_PTR(&adc_init_obj) },
    { MP_ROM_QSTR(MP_QSTR_atten), MP_ROM_PTR(&adc_atten_obj) },
    { MP_ROM_QSTR(MP_QSTR_width), MP_ROM_PTR(&adc_width_obj) },
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&adc_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_read_u16), MP_ROM_PTR(&adc_read_u16_obj) },
    { MP_ROM_QSTR(MP_QSTR_read_uv), MP_ROM_PTR(&adc_read_uv_obj) },
    { MP_ROM_QSTR(MP_QSTR_ATTN_0DB), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_ATTN_2_5DB), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_ATTN_6DB), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_ATTN_11DB), MP_ROM_INT(3) },
    { MP_ROM_QSTR(MP_QSTR_WIDTH_9BIT), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_WIDTH_10BIT), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_WIDTH_11BIT), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_WIDTH_12BIT), MP_ROM_INT(3) },
};
static MP_DEFINE_CONST_DICT(adc_locals, adc_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tukarhw_adc_type,
    MP_QSTR_ADC,
    MP_TYPE_FLAG_NONE,
    make_new, adc_make_new,
    locals_dict, &adc_locals
    );

// -- WDT ------------------------------------------------------------------------------------------
extern const mp_obj_type_t tukarhw_wdt_type;
static const mp_obj_base_t wdt_obj = { &tukarhw_wdt_type };

// WDT(id=0, timeout=5000)
static mp_obj_t wdt_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    static const mp_arg_t allowed[] = {
        { MP_QSTR_id, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(0)} },
        { MP_QSTR_timeout, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_INT(5000)} },
    };
    mp_arg_val_t a[MP_ARRAY_SIZE(allowed)];
    mp_map_t kw;
    mp_map_init_fixed_table(&kw, n_kw, args + n_args);
    parse(n_args, args, &kw, MP_ARRAY_SIZE(allowed), allowed, a);
    if (!mp_obj_equal(a[0].u_obj, MP_OBJ_NEW_SMALL_INT(0))) {
        vstr_t v; // "WDT(%r) doesn't exist"
        mp_print_t print;
        vstr_init_print(&v, 32, &print);
        vstr_add_str(&v, "WDT(");
        mp_obj_print_helper(&print, a[0].u_obj, PRINT_REPR);
        vstr_add_str(&v, ") doesn't exist");
        nlr_raise(mp_obj_new_exception_arg1(&mp_type_ValueError, mp_obj_new_str_from_vstr(&v)));
    }
    uint8_t buf[BUF];
    put_u32(buf + 3, mp_obj_get_int_truncated(a[1].u_obj));
    hw_call(OP_WDT_INIT, buf, 4);
    return MP_OBJ_FROM_PTR(&wdt_obj);
}

static mp_obj_t wdt_feed(mp_obj_t self) {
    uint8_t buf[BUF];
    hw_call(OP_WDT_FEED, buf, 0);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(wdt_feed_obj, wdt_feed);

static const mp_rom_map_elem_t wdt_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_feed), MP_ROM_PTR(&wdt_feed_obj) },
};
static MP_DEFINE_CONST_DICT(wdt_locals, wdt_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tukarhw_wdt_type,
    MP_QSTR_WDT,
    MP_TYPE_FLAG_NONE,
    make_new, wdt_make_new,
    locals_dict, &wdt_locals
    );

// -- the module's functions -----------------------------------------------------------------------
static mp_obj_t reset_cause(void) {
    uint8_t buf[BUF];
    size_t n = hw_call(OP_CAUSE, buf, 0);
    return MP_OBJ_NEW_SMALL_INT(n ? buf[0] : 0);
}
static MP_DEFINE_CONST_FUN_OBJ_0(reset_cause_obj, reset_cause);

static mp_obj_t unique_id(void) {
    uint8_t buf[BUF];
    size_t n = hw_call(OP_UID, buf, 0);
    return mp_obj_new_bytes(buf, n);
}
static MP_DEFINE_CONST_FUN_OBJ_0(unique_id_obj, unique_id);

// The host resets the chip (kills this process and starts it again): nothing runs after, so this
// blocks for good, holding the GIL, without using the CPU.
static mp_obj_t reset(void) {
    uint8_t buf[BUF];
    hw_call(OP_RESET, buf, 0);
    for (;;) {
        pause();
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(reset_obj, reset);

static mp_obj_t freq(size_t n_args, const mp_obj_t *args) {
    if (n_args == 0 || args[0] == mp_const_none) {
        return mp_obj_new_int(160000000);
    }
    static const mp_int_t ok[] = { 20000000, 40000000, 80000000, 160000000, 240000000 };
    for (size_t i = 0; i < MP_ARRAY_SIZE(ok); i++) {
        if (mp_obj_equal(args[0], mp_obj_new_int(ok[i]))) {
            return mp_const_none;
        }
    }
    mp_raise_ValueError(MP_ERROR_TEXT("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz"));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(freq_obj, 0, 1, freq);

static mp_obj_t idle(void) {
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(idle_obj, idle);

static mp_obj_t disable_irq(void) {
    return MP_OBJ_NEW_SMALL_INT(0);
}
static MP_DEFINE_CONST_FUN_OBJ_0(disable_irq_obj, disable_irq);

static mp_obj_t enable_irq(size_t n_args, const mp_obj_t *args) {
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(enable_irq_obj, 0, 1, enable_irq);

// time_pulse_us(pin, pulse_level, timeout_us=1000000): no pulse is ever timed here; -1 when the pin
// is not at pulse_level (a time-out waiting for the pulse to start), -2 when it is.
static mp_obj_t time_pulse_us(size_t n_args, const mp_obj_t *args) {
    mp_obj_t dest[2];
    mp_load_method(args[0], MP_QSTR_value, dest);
    mp_obj_t v = mp_call_method_n_kw(0, 0, dest);
    return MP_OBJ_NEW_SMALL_INT(mp_obj_equal(v, args[1]) ? -2 : -1);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(time_pulse_us_obj, 2, 3, time_pulse_us);

// -- the host's notes -----------------------------------------------------------------------------
// A pin edge: its handler, if any, with the Pin (run by the scheduler, with the GIL).
static mp_obj_t fire(mp_obj_t pin) {
    mp_obj_t h = MP_STATE_VM(tukarhw_pin_irq)[((pin_obj_t *)MP_OBJ_TO_PTR(pin))->id];
    if (h != MP_OBJ_NULL && h != mp_const_none) {
        mp_call_function_1(h, pin);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(fire_obj, fire);

// A heap probe: gc.collect(), then what gc.mem_alloc() and gc.mem_free() say, and
// micropython.mem_info() (its "max free sz" line is the largest free block, in 16-byte blocks).
static mp_obj_t probe(mp_obj_t arg) {
    gc_collect();
    gc_info_t info;
    gc_info(&info);
    mp_printf(&mp_plat_print, "tukar-heap: used=%u free=%u\n",
        (unsigned)info.used, (unsigned)info.free);
    mp_obj_t dest[2];
    mp_load_method(mp_module_get_builtin(MP_QSTR_micropython, false), MP_QSTR_mem_info, dest);
    mp_call_method_n_kw(0, 0, dest);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(probe_obj, probe);

// The notes thread: a plain thread, not a MicroPython one. It never takes the GIL and touches no
// object: it only hands static objects to the scheduler (whose queue has its own lock) and sets a
// flag. A full queue drops an edge, which the firmware's next poll still sees.
static void *notes(void *arg) {
    uint8_t note[2];
    while (recv_all(note_fd, note, 2) == 0) {
        if (note[0] == 'I') {
            mp_sched_schedule(MP_OBJ_FROM_PTR(&fire_obj), MP_OBJ_FROM_PTR(&pins[note[1]]));
        } else if (note[0] == 'F') {
            flash_broken = note[1] == 1;
        } else if (note[0] == 'M') {
            mp_sched_schedule(MP_OBJ_FROM_PTR(&probe_obj), MP_OBJ_NEW_SMALL_INT(0));
        }
    }
    return NULL; // the host closed the socket: no more notes
}

// builtins.open. A file opened to write, append or update is a flash write: while the flash
// fails it raises EIO, as a failing flash chip reports it; otherwise the host is told first
// (FLASH_WRITE, the path) and the file opened once it answers. Then the open() it replaced.
static mp_obj_t flash_open(size_t n_args, const mp_obj_t *args, mp_map_t *kw) {
    mp_obj_t mode = MP_OBJ_NEW_QSTR(MP_QSTR_r);
    if (n_args > 1) {
        mode = args[1];
    } else {
        mp_map_elem_t *e = mp_map_lookup(kw, MP_OBJ_NEW_QSTR(MP_QSTR_mode), MP_MAP_LOOKUP);
        if (e != NULL) {
            mode = e->value;
        }
    }
    if (mp_obj_is_str(mode) && strpbrk(mp_obj_str_get_str(mode), "wa+") != NULL) {
        if (flash_broken) {
            mp_raise_OSError(MP_EIO);
        }
        uint8_t buf[BUF];
        size_t n = 0;
        const char *path = "";
        if (n_args > 0 && mp_obj_is_str(args[0])) {
            path = mp_obj_str_get_data(args[0], &n);
        }
        if (n > BUF - 3) {
            n = BUF - 3;
        }
        hw_call(OP_FLASH_WRITE, buf, put_data(buf, 3, path, n));
    }
    mp_obj_t fwd[4 + 2 * 4]; // open(file, mode, buffering, encoding), by position or keyword
    if (n_args + kw->used > 4) {
        mp_raise_TypeError(MP_ERROR_TEXT("function takes at most 4 arguments"));
    }
    size_t k = n_args;
    memcpy(fwd, args, n_args * sizeof(mp_obj_t));
    for (size_t i = 0; i < kw->alloc; i++) {
        if (mp_map_slot_is_filled(kw, i)) {
            fwd[k++] = kw->table[i].key;
            fwd[k++] = kw->table[i].value;
        }
    }
    return mp_call_function_n_kw(MP_STATE_VM(tukarhw_open), n_args, kw->used, fwd);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(flash_open_obj, 1, flash_open);

// -- the start: connect, notes, HELLO -------------------------------------------------------------
static int connect_hw(const char *spec) {
    char host[64];
    const char *colon = strrchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : 0;
    if (colon == NULL || n >= sizeof(host)) {
        return -EINVAL;
    }
    memcpy(host, spec, n);
    host[n] = 0;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *ai;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) {
        return -EHOSTUNREACH;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
        int r;
        do {
            r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
            err = errno;
            close(fd);
        }
    }
    freeaddrinfo(ai);
    if (err) {
        return -err;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); // one small request at a time
    return fd;
}

// What the host records of this process: implementation, thread model, word size, and whether
// `tukar` comes from the frozen image (no copy on any file-system path).
static size_t identity(char *out, size_t size) {
    const char *where = "frozen";
    size_t len;
    mp_obj_t *items;
    mp_obj_list_get(mp_sys_path, &len, &items);
    for (size_t i = 0; i < len; i++) {
        size_t pl;
        const char *p = mp_obj_str_get_data(items[i], &pl);
        if (pl == 7 && memcmp(p, ".frozen", 7) == 0) {
            continue;
        }
        char path[256];
        struct stat st;
        int n = snprintf(path, sizeof(path), "%.*s/tukar", pl ? (int)pl : 1, pl ? p : ".");
        if (n > 0 && (size_t)n < sizeof(path) && stat(path, &st) == 0) {
            where = "filesystem";
        }
    }
    #if MICROPY_PY_THREAD_GIL
    const char *threads = "GIL";
    #elif MICROPY_PY_THREAD
    const char *threads = "unsafe";
    #else
    const char *threads = "none";
    #endif
    return snprintf(out, size, "micropython %s %ld %s", threads, (long)MP_SSIZE_MAX, where);
}

static void start(void) {
    const char *spec = getenv("TUKAR_HW");
    if (spec == NULL || *spec == 0) {
        spec = "127.0.0.1:0";
    }
    MP_THREAD_GIL_EXIT();
    int rpc = connect_hw(spec);
    int note = rpc < 0 ? rpc : connect_hw(spec);
    MP_THREAD_GIL_ENTER();
    if (note < 0) {
        if (rpc >= 0) {
            close(rpc);
        }
        mp_raise_OSError(-note);
    }
    rpc_fd = rpc;
    note_fd = note;
    for (int i = 0; i < N_PINS; i++) {
        pins[i].base.type = &tukarhw_pin_type;
        pins[i].id = i;
    }

    // builtins.open checks the flash first (the override dictionary is the only heap this takes)
    mp_obj_dict_t *over = MP_STATE_VM(mp_module_builtins_override_dict);
    mp_obj_t open_q = MP_OBJ_NEW_QSTR(MP_QSTR_open);
    mp_map_elem_t *e = over ? mp_map_lookup(&over->map, open_q, MP_MAP_LOOKUP) : NULL;
    MP_STATE_VM(tukarhw_open) = e ? e->value : MP_OBJ_FROM_PTR(&mp_builtin_open_obj);
    mp_store_attr(MP_OBJ_FROM_PTR(&mp_module_builtins), MP_QSTR_open,
        MP_OBJ_FROM_PTR(&flash_open_obj));

    uint8_t buf[BUF];
    buf[0] = 'N';
    send_all(note_fd, buf, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); // every signal stays with the MicroPython threads
    pthread_t t;
    int err = pthread_create(&t, &attr, notes, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        mp_raise_OSError(err);
    }
    started = true;

    char id[96];
    size_t n = identity(id, sizeof(id));
    hw_call(OP_HELLO, buf, put_data(buf, 3, id, n < sizeof(id) ? n : sizeof(id) - 1));
}

// Run at each import of the built-in (`import machine` runs machine.py, which imports it): the
// first connects.
static mp_obj_t module_init(void) {
    if (!started) {
        start();
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(module_init_obj, module_init);

// machine.py's one call: the module being imported under `name` (its shell, in sys.modules) takes
// this module's globals, so that `import machine`, the first as every later one, gives these names
// and the shell's own dictionary, and the code that filled it, are let go.
static mp_obj_t alias(mp_obj_t name) {
    mp_map_elem_t *e = mp_map_lookup(&MP_STATE_VM(mp_loaded_modules_dict).map, name, MP_MAP_LOOKUP);
    if (e == NULL || !mp_obj_is_type(e->value, &mp_type_module)) {
        mp_raise_msg(&mp_type_ImportError, MP_ERROR_TEXT("_alias: no such module being imported"));
    }
    mp_obj_module_t *shell = MP_OBJ_TO_PTR(e->value);
    shell->globals = (mp_obj_dict_t *)&tukarhw_module_globals;
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(alias_obj, alias);

static const mp_rom_map_elem_t tukarhw_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_machine) },
    { MP_ROM_QSTR(MP_QSTR___init__), MP_ROM_PTR(&module_init_obj) },
    { MP_ROM_QSTR(MP_QSTR__alias), MP_ROM_PTR(&alias_obj) },
    { MP_ROM_QSTR(MP_QSTR_Pin), MP_ROM_PTR(&tukarhw_pin_type) },
    { MP_ROM_QSTR(MP_QSTR_I2C), MP_ROM_PTR(&tukarhw_i2c_type) },
    { MP_ROM_QSTR(MP_QSTR_SoftI2C), MP_ROM_PTR(&tukarhw_soft_i2c_type) },
    { MP_ROM_QSTR(MP_QSTR_SPI), MP_ROM_PTR(&tukarhw_spi_type) },
    { MP_ROM_QSTR(MP_QSTR_ADC), MP_ROM_PTR(&tukarhw_adc_type) },
    { MP_ROM_QSTR(MP_QSTR_WDT), MP_ROM_PTR(&tukarhw_wdt_type) },
    { MP_ROM_QSTR(MP_QSTR_reset_cause), MP_ROM_PTR(&reset_cause_obj) },
    { MP_ROM_QSTR(MP_QSTR_unique_id), MP_ROM_PTR(&unique_id_obj) },
    { MP_ROM_QSTR(MP_QSTR_reset), MP_ROM_PTR(&reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_soft_reset), MP_ROM_PTR(&reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_freq), MP_ROM_PTR(&freq_obj) },
    { MP_ROM_QSTR(MP_QSTR_idle), MP_ROM_PTR(&idle_obj) },
    { MP_ROM_QSTR(MP_QSTR_disable_irq), MP_ROM_PTR(&disable_irq_obj) },
    { MP_ROM_QSTR(MP_QSTR_enable_irq), MP_ROM_PTR(&enable_irq_obj) },
    { MP_ROM_QSTR(MP_QSTR_time_pulse_us), MP_ROM_PTR(&time_pulse_us_obj) },
    { MP_ROM_QSTR(MP_QSTR_PWRON_RESET), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_HARD_RESET), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_WDT_RESET), MP_ROM_INT(3) },
    { MP_ROM_QSTR(MP_QSTR_DEEPSLEEP_RESET), MP_ROM_INT(4) },
    { MP_ROM_QSTR(MP_QSTR_SOFT_RESET), MP_ROM_INT(5) },
};
MP_DEFINE_CONST_DICT(tukarhw_module_globals, tukarhw_module_globals_table);

const mp_obj_module_t tukarhw_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&tukarhw_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR__tukarhw, tukarhw_module);
MP_REGISTER_ROOT_POINTER(mp_obj_t tukarhw_pin_irq[256]);
MP_REGISTER_ROOT_POINTER(mp_obj_t tukarhw_open);
