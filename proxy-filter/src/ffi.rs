//! The Envoy dynamic-module ABI (`v0.2.0`, Envoy 1.40): the C types, the hooks this module
//! exports, and the callbacks it calls. The only module with `unsafe` code; everything it does is
//! convert between C and the safe [`crate::filter`] / [`crate::request::StreamHost`] world.
//!
//! Declarations are ours, written from the ABI's documented facts and checked against the
//! Envoy 1.40 binary (`nm -D` for the names, a running Envoy for the behaviour).
//!
//! State owned:
//! - `CALLBACKS`: Envoy's callbacks, resolved by name once in `on_program_init` (with
//!   `dlsym(RTLD_DEFAULT)`: Envoy exports them). A callback this module needs that the binary does
//!   not export makes `on_program_init` return NULL, so Envoy refuses the module cleanly instead
//!   of dying on a lazy-binding error at the first request; and the rlib links without Envoy, so
//!   tests can use the safe modules.
//! - The module pins itself in memory (`RTLD_NODELETE`) at init: a filter config owns background
//!   threads (policy watcher, JWKS fetcher), and code must not be unmapped under them.
//! - A filter config is a `Box<FilterConfig>` from `config_new` to `config_destroy`. A stream's
//!   module pointer is that same config pointer: streams keep no state of their own (Envoy holds
//!   the config for as long as any of its filters lives), so creating a stream allocates nothing.
//!
//! Every hook runs its body under `catch_unwind`: a panic never crosses into Envoy. A panic while
//! deciding a request denies it (403); in `config_new` it refuses the config (NULL).
#![allow(
    unsafe_code,
    reason = "the FFI boundary with Envoy: raw pointers, exported hooks, resolved callbacks"
)]
#![warn(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::answer::{self, HeadersStatus, LocalReply};
use crate::filter::{FilterConfig, Mode};
use crate::logging::{self, Level};
use crate::request::{parse_address, Attribute, StreamHost};

// === C types ===

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module, read by Envoy during
/// the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(s: &str) -> ModuleBuffer {
        ModuleBuffer {
            ptr: s.as_ptr().cast(),
            length: s.len(),
        }
    }

    const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header` (only in hooks this module ignores).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_filter_config_envoy_ptr`.
pub type ConfigEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_config_module_ptr`.
pub type ConfigModulePtr = *const c_void;
/// `envoy_dynamic_module_type_http_filter_envoy_ptr`.
pub type FilterEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_module_ptr`.
pub type FilterModulePtr = *const c_void;

/// C enums are `int`-sized; these are their values as this module uses them.
type CEnum = u32;
/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: CEnum = 0;
/// `..._request_body_status_Continue`, `..._trailers_status_Continue`, and so on: every
/// "continue" status of the body, trailers and response hooks is 0.
const CONTINUE: CEnum = 0;

// === Callbacks (exported by Envoy, resolved at init) ===

type GetHeaderFn = unsafe extern "C" fn(
    FilterEnvoyPtr,
    CEnum,
    ModuleBuffer,
    *mut EnvoyBuffer,
    usize,
    *mut usize,
) -> bool;
type SetHeaderFn = unsafe extern "C" fn(FilterEnvoyPtr, CEnum, ModuleBuffer, ModuleBuffer) -> bool;
type SendResponseFn = unsafe extern "C" fn(
    FilterEnvoyPtr,
    u32,
    *mut ModuleHttpHeader,
    usize,
    ModuleBuffer,
    ModuleBuffer,
);
type GetAttributeStringFn = unsafe extern "C" fn(FilterEnvoyPtr, CEnum, *mut EnvoyBuffer) -> bool;
type GetAttributeIntFn = unsafe extern "C" fn(FilterEnvoyPtr, CEnum, *mut u64) -> bool;
type GetAttributeBoolFn = unsafe extern "C" fn(FilterEnvoyPtr, CEnum, *mut bool) -> bool;
/// `envoy_dynamic_module_callback_http_get_downstream_direct_remote_address`: the physical peer
/// of the downstream connection (never rewritten by X-Forwarded-For or PROXY protocol), as the
/// address text (`10.0.0.5`, `::1`: no port, no brackets) and the port; `false` when the peer
/// is not an IP address (a pipe).
type GetDirectRemoteAddressFn =
    unsafe extern "C" fn(FilterEnvoyPtr, *mut EnvoyBuffer, *mut u32) -> bool;
type LogFn = unsafe extern "C" fn(CEnum, ModuleBuffer);
type LogEnabledFn = unsafe extern "C" fn(CEnum) -> bool;
type IsValidationModeFn = unsafe extern "C" fn() -> bool;

#[derive(Debug, Clone, Copy)]
struct Callbacks {
    get_header: GetHeaderFn,
    set_header: SetHeaderFn,
    send_response: SendResponseFn,
    get_attribute_string: GetAttributeStringFn,
    get_attribute_int: GetAttributeIntFn,
    get_attribute_bool: GetAttributeBoolFn,
    /// Required: `source.ip` / `ipBlocks` is the physical peer, and there is no safe fallback
    /// (attribute 24, `source.address`, follows X-Forwarded-For).
    get_direct_remote_address: GetDirectRemoteAddressFn,
    log: Option<LogFn>,
    log_enabled: Option<LogEnabledFn>,
    is_validation_mode: Option<IsValidationModeFn>,
}

static CALLBACKS: OnceLock<Callbacks> = OnceLock::new();

// glibc's dynamic-linker interface (libc on glibc >= 2.34).
#[repr(C)]
struct DlInfo {
    dli_fname: *const c_char,
    dli_fbase: *mut c_void,
    dli_sname: *const c_char,
    dli_saddr: *mut c_void,
}

const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();
const RTLD_LAZY: c_int = 0x0001;
const RTLD_NOLOAD: c_int = 0x0004;
const RTLD_NODELETE: c_int = 0x1000;

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
}

/// The address of a symbol in the running process, if exported.
fn lookup(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: `name` is NUL-terminated; dlsym only reads it, and RTLD_DEFAULT searches the
    // global scope (Envoy's executable exports the callbacks).
    let p = unsafe { dlsym(RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Resolves one callback to a typed function pointer.
macro_rules! resolve {
    ($name:literal as $ty:ty) => {
        lookup($name).map(|p| {
            // SAFETY: `p` is the address of the exported function `$name`; `$ty` is its C
            // signature as documented by the ABI and checked against Envoy 1.40 by running it.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        })
    };
}

fn resolve_callbacks() -> Result<Callbacks, String> {
    let missing = |name: &str| format!("Envoy does not export `{name}` (not ABI v0.2.0?)");
    Ok(Callbacks {
        get_header: resolve!(c"envoy_dynamic_module_callback_http_get_header" as GetHeaderFn)
            .ok_or_else(|| missing("envoy_dynamic_module_callback_http_get_header"))?,
        set_header: resolve!(c"envoy_dynamic_module_callback_http_set_header" as SetHeaderFn)
            .ok_or_else(|| missing("envoy_dynamic_module_callback_http_set_header"))?,
        send_response: resolve!(
            c"envoy_dynamic_module_callback_http_send_response" as SendResponseFn
        )
        .ok_or_else(|| missing("envoy_dynamic_module_callback_http_send_response"))?,
        get_attribute_string: resolve!(
            c"envoy_dynamic_module_callback_http_filter_get_attribute_string"
                as GetAttributeStringFn
        )
        .ok_or_else(|| missing("envoy_dynamic_module_callback_http_filter_get_attribute_string"))?,
        get_attribute_int: resolve!(
            c"envoy_dynamic_module_callback_http_filter_get_attribute_int" as GetAttributeIntFn
        )
        .ok_or_else(|| missing("envoy_dynamic_module_callback_http_filter_get_attribute_int"))?,
        get_attribute_bool: resolve!(
            c"envoy_dynamic_module_callback_http_filter_get_attribute_bool" as GetAttributeBoolFn
        )
        .ok_or_else(|| missing("envoy_dynamic_module_callback_http_filter_get_attribute_bool"))?,
        get_direct_remote_address: resolve!(
            c"envoy_dynamic_module_callback_http_get_downstream_direct_remote_address"
                as GetDirectRemoteAddressFn
        )
        .ok_or_else(|| {
            missing("envoy_dynamic_module_callback_http_get_downstream_direct_remote_address")
        })?,
        log: resolve!(c"envoy_dynamic_module_callback_log" as LogFn),
        log_enabled: resolve!(c"envoy_dynamic_module_callback_log_enabled" as LogEnabledFn),
        is_validation_mode: resolve!(
            c"envoy_dynamic_module_callback_is_validation_mode" as IsValidationModeFn
        ),
    })
}

/// Marks this shared object `RTLD_NODELETE`, so that Envoy's `dlclose` never unmaps code that
/// the background threads may still run.
fn pin_module() -> bool {
    let mut info = DlInfo {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let here = envoy_dynamic_module_on_program_init as *const c_void;
    // SAFETY: `here` is an address inside this object; dladdr fills `info` with pointers owned
    // by the dynamic linker, valid while the object is loaded (it is: we are running in it).
    let found = unsafe { dladdr(here, &mut info) } != 0;
    if !found || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: `dli_fname` is the NUL-terminated path of this already loaded object; RTLD_NOLOAD
    // loads nothing new, it only adds RTLD_NODELETE to the existing mapping (one more reference).
    let handle = unsafe { dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) };
    !handle.is_null()
}

// === Safe wrappers used by other modules ===

/// Writes a line to Envoy's log; `false` when not running inside Envoy.
pub(crate) fn envoy_log(level: Level, message: &str) -> bool {
    match CALLBACKS.get().and_then(|c| c.log) {
        Some(log) => {
            // SAFETY: `log` is Envoy's log callback; the buffer is valid for the call and Envoy
            // copies it. The logger is thread-safe (the watcher threads log too).
            unsafe { log(level as CEnum, ModuleBuffer::of(message)) };
            true
        }
        None => false,
    }
}

/// Whether Envoy logs at `level`; `None` when not running inside Envoy.
pub(crate) fn envoy_log_enabled(level: Level) -> Option<bool> {
    let enabled = CALLBACKS.get()?.log_enabled?;
    // SAFETY: a plain query of Envoy's logger level.
    Some(unsafe { enabled(level as CEnum) })
}

// === impl EnvoyStream ===

/// One stream's view of Envoy, valid for the duration of one hook call.
struct EnvoyStream {
    ptr: FilterEnvoyPtr,
    callbacks: Callbacks,
    responded: bool,
}

impl StreamHost for EnvoyStream {
    fn attribute_bytes(&self, id: Attribute) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `self.ptr` is the live filter Envoy passed to the running hook; `out` is a
        // valid place to write.
        let ok = unsafe { (self.callbacks.get_attribute_string)(self.ptr, id as CEnum, &mut out) };
        if !ok || out.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy owns these bytes and keeps them until the end of the hook or until the
        // request changes; the slice borrows `self`, and every mutation takes `&mut self`.
        Some(unsafe { std::slice::from_raw_parts(out.ptr.cast::<u8>(), out.length) })
    }

    fn attribute_int(&self, id: Attribute) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: as in `attribute_bytes`; `out` is a valid u64.
        let ok = unsafe { (self.callbacks.get_attribute_int)(self.ptr, id as CEnum, &mut out) };
        ok.then_some(out)
    }

    fn attribute_bool(&self, id: Attribute) -> Option<bool> {
        let mut out = false;
        // SAFETY: as in `attribute_bytes`; `out` is a valid bool.
        let ok = unsafe { (self.callbacks.get_attribute_bool)(self.ptr, id as CEnum, &mut out) };
        ok.then_some(out)
    }

    fn direct_remote_address(&self) -> Option<(IpAddr, u16)> {
        let mut address = EnvoyBuffer::EMPTY;
        let mut port = 0u32;
        // SAFETY: live filter pointer; `address` and `port` are valid places to write.
        let ok = unsafe {
            (self.callbacks.get_direct_remote_address)(self.ptr, &mut address, &mut port)
        };
        if !ok {
            return None;
        }
        // SAFETY: Envoy's bytes (the connection's address text), valid during this hook; parsed
        // at once.
        let text = unsafe { envoy_bytes(&address) };
        let (ip, _) = std::str::from_utf8(text).ok().and_then(parse_address)?;
        Some((ip, u16::try_from(port).ok()?))
    }

    fn request_header_values(&self, name: &str, out: &mut Vec<(String, String)>) {
        // The first call also returns how many values the header has; the rest are by index.
        let get = |index: usize, count: *mut usize| -> String {
            let mut value = EnvoyBuffer::EMPTY;
            // SAFETY: live filter pointer; the key buffer is valid for the call; `value` and
            // `count` (NULL is allowed) are valid places to write.
            let ok = unsafe {
                (self.callbacks.get_header)(
                    self.ptr,
                    REQUEST_HEADER,
                    ModuleBuffer::of(name),
                    &mut value,
                    index,
                    count,
                )
            };
            if !ok || value.ptr.is_null() {
                // A header present with an empty value.
                return String::new();
            }
            // SAFETY: Envoy's bytes, valid during this hook; copied at once.
            let bytes = unsafe { std::slice::from_raw_parts(value.ptr.cast::<u8>(), value.length) };
            String::from_utf8_lossy(bytes).into_owned()
        };
        let mut count = 0usize;
        let first = get(0, &mut count);
        if count == 0 {
            return;
        }
        out.push((name.to_string(), first));
        for index in 1..count {
            out.push((name.to_string(), get(index, std::ptr::null_mut())));
        }
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: live filter pointer; both buffers are valid for the call and Envoy copies them
        // (a NULL value removes the header).
        unsafe {
            (self.callbacks.set_header)(self.ptr, REQUEST_HEADER, ModuleBuffer::of(name), value)
        }
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &str, details: &str) {
        let mut c_headers: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        let headers_ptr = if c_headers.is_empty() {
            std::ptr::null_mut()
        } else {
            c_headers.as_mut_ptr()
        };
        self.responded = true;
        // SAFETY: live filter pointer; the header array, body and details outlive the call and
        // Envoy copies them into its local reply.
        unsafe {
            (self.callbacks.send_response)(
                self.ptr,
                status,
                headers_ptr,
                c_headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details),
            )
        }
    }
}

// === Panic guard ===

/// Runs a hook body; a panic is logged and turned into `on_panic`.
fn guarded<R>(hook: &str, on_panic: R, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            logging::log(
                Level::Error,
                &format!("panic in {hook} caught at the FFI boundary (a meshauthz bug): {what}"),
            );
            on_panic
        }
    }
}

/// The bytes of an Envoy buffer (empty when NULL).
///
/// # Safety
/// `b` must point to `b.length` readable bytes (or be NULL) for as long as the result is used.
unsafe fn envoy_bytes(b: &EnvoyBuffer) -> &[u8] {
    if b.ptr.is_null() {
        return &[];
    }
    // SAFETY: per the contract above.
    unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) }
}

// INVARIANT: one FilterConfig is shared by every worker thread's streams.
const _: fn() = || {
    fn shared_across_workers<T: Send + Sync>() {}
    shared_across_workers::<FilterConfig>();
};

/// The config behind a module pointer.
///
/// # Safety
/// `ptr` must be a pointer returned by `on_http_filter_config_new` and not yet destroyed.
unsafe fn config_ref<'a>(ptr: *const c_void) -> &'a FilterConfig {
    // SAFETY: per the contract above, `ptr` came from `Box::into_raw(Box<FilterConfig>)` and is
    // alive; FilterConfig is Sync, so shared references from several workers are fine.
    unsafe { &*ptr.cast::<FilterConfig>() }
}

// === Hooks: module ===

static ABI_VERSION_C: &CStr = c"v0.2.0";

/// `envoy_dynamic_module_on_program_init`: the ABI version, or NULL to refuse loading.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guarded("on_program_init", std::ptr::null(), || {
        debug_assert_eq!(ABI_VERSION_C.to_bytes(), crate::ABI_VERSION.as_bytes());
        let callbacks = match resolve_callbacks() {
            Ok(c) => c,
            Err(e) => {
                logging::log(Level::Critical, &format!("cannot load: {e}"));
                return std::ptr::null();
            }
        };
        let _ = CALLBACKS.set(callbacks);
        if !pin_module() {
            logging::log(
                Level::Warn,
                "could not pin the module in memory; set `do_not_close: true` in dynamic_module_config",
            );
        }
        ABI_VERSION_C.as_ptr()
    })
}

// === Hooks: HTTP filter config ===

/// `envoy_dynamic_module_on_http_filter_config_new`: loads the policy for one filter config.
/// NULL refuses the config (Envoy, and `envoy --mode validate`, then reject it).
///
/// # Safety
/// Envoy passes buffers valid for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy_ptr: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    guarded("on_http_filter_config_new", std::ptr::null(), || {
        // SAFETY: Envoy's buffers, valid for the duration of this call, which outlives them here.
        let (name, config) = unsafe { (envoy_bytes(&name), envoy_bytes(&config)) };
        let Some(callbacks) = CALLBACKS.get() else {
            return std::ptr::null();
        };
        // SAFETY: called on Envoy's main thread (config loading), as the callback requires.
        let validating = callbacks.is_validation_mode.is_some_and(|f| unsafe { f() });
        match new_config(name, config, validating) {
            Ok(c) => Box::into_raw(Box::new(c)).cast_const().cast(),
            Err(e) => {
                logging::log(Level::Error, &format!("filter config rejected: {e}"));
                std::ptr::null()
            }
        }
    })
}

fn new_config(name: &[u8], config: &[u8], validating: bool) -> Result<FilterConfig, String> {
    if name != crate::FILTER_NAME.as_bytes() {
        return Err(format!(
            "unknown filter_name `{}`: this module provides `{}`",
            String::from_utf8_lossy(name),
            crate::FILTER_NAME
        ));
    }
    let settings = crate::config::parse(config).map_err(|e| e.to_string())?;
    let workload = settings.workload.clone();
    let mode = if validating { Mode::Once } else { Mode::Watch };
    let c = FilterConfig::load(settings, mode).map_err(|e| e.to_string())?;
    logging::log(
        Level::Info,
        &format!(
            "filter config for `{workload}` ready (policy generation {}{})",
            c.snapshot().generation,
            if validating {
                ", validation only"
            } else {
                ", watching the policy files"
            }
        ),
    );
    Ok(c)
}

/// `envoy_dynamic_module_on_http_filter_config_destroy`.
///
/// # Safety
/// `config` is a pointer from `config_new`, destroyed once, after every stream using it.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: ConfigModulePtr,
) {
    guarded("on_http_filter_config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: `config` came from Box::into_raw in config_new and is destroyed once.
            // Dropping it stops the policy watcher and the JWKS fetcher.
            drop(unsafe { Box::from_raw(config.cast_mut().cast::<FilterConfig>()) });
        }
    })
}

// === Hooks: HTTP stream ===

/// `envoy_dynamic_module_on_http_filter_new`: a stream's module pointer is its config's.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    _filter_envoy_ptr: FilterEnvoyPtr,
) -> FilterModulePtr {
    guarded("on_http_filter_new", std::ptr::null(), || config)
}

/// `envoy_dynamic_module_on_http_filter_destroy`: nothing to free (see `on_http_filter_new`).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: FilterModulePtr) {
    guarded("on_http_filter_destroy", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_request_headers`: the decision. Returns
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`: Continue (0) to allow,
/// StopIteration (1) after a local reply.
///
/// # Safety
/// `filter_envoy_ptr` is the live stream and `filter` a pointer from `on_http_filter_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter: FilterModulePtr,
    _end_of_stream: bool,
) -> CEnum {
    let Some(callbacks) = CALLBACKS.get().copied() else {
        // Unreachable: without callbacks on_program_init refused the module.
        return HeadersStatus::StopIteration as CEnum;
    };
    let mut stream = EnvoyStream {
        ptr: filter_envoy_ptr,
        callbacks,
        responded: false,
    };
    let status = guarded("on_http_filter_request_headers", None, || {
        // SAFETY: `filter` is the config pointer from on_http_filter_new (see config_ref).
        let config = unsafe { config_ref(filter) };
        Some(config.on_request_headers(&mut stream))
    });
    match status {
        Some(s) => s as CEnum,
        None => {
            // Fail closed: the request is denied, Envoy keeps serving.
            if !stream.responded {
                let reply = LocalReply::internal_error();
                let _ = catch_unwind(AssertUnwindSafe(|| answer::send(&reply, &mut stream)));
            }
            HeadersStatus::StopIteration as CEnum
        }
    }
}

/// `envoy_dynamic_module_on_http_filter_request_body`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _end_of_stream: bool,
) -> CEnum {
    guarded("on_http_filter_request_body", CONTINUE, || CONTINUE)
}

/// `envoy_dynamic_module_on_http_filter_request_trailers`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> CEnum {
    guarded("on_http_filter_request_trailers", CONTINUE, || CONTINUE)
}

/// `envoy_dynamic_module_on_http_filter_response_headers`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _end_of_stream: bool,
) -> CEnum {
    guarded("on_http_filter_response_headers", CONTINUE, || CONTINUE)
}

/// `envoy_dynamic_module_on_http_filter_response_body`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _end_of_stream: bool,
) -> CEnum {
    guarded("on_http_filter_response_body", CONTINUE, || CONTINUE)
}

/// `envoy_dynamic_module_on_http_filter_response_trailers`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> CEnum {
    guarded("on_http_filter_response_trailers", CONTINUE, || CONTINUE)
}

/// `envoy_dynamic_module_on_http_filter_stream_complete`: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
    guarded("on_http_filter_stream_complete", (), || ())
}

// Required by Envoy 1.40 at config load although this filter never schedules work, makes
// callouts or streams, or terminates a stream: no-ops with the ABI's signatures.

/// `envoy_dynamic_module_on_http_filter_scheduled`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _event_id: u64,
) {
    guarded("on_http_filter_scheduled", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_http_callout_done`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _callout_id: u64,
    _result: CEnum,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
    guarded("on_http_filter_http_callout_done", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_http_stream_headers`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
    guarded("on_http_filter_http_stream_headers", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_http_stream_data`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
    guarded("on_http_filter_http_stream_data", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_http_stream_trailers`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
    guarded("on_http_filter_http_stream_trailers", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_http_stream_complete`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
    guarded("on_http_filter_http_stream_complete", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_http_stream_reset`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _reason: CEnum,
) {
    guarded("on_http_filter_http_stream_reset", (), || ())
}

/// `envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
    guarded(
        "on_http_filter_downstream_above_write_buffer_high_watermark",
        (),
        || (),
    )
}

/// `envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
    guarded(
        "on_http_filter_downstream_below_write_buffer_low_watermark",
        (),
        || (),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_envoy_nothing_resolves_and_logging_falls_back() {
        // The test binary exports no Envoy callbacks.
        assert!(resolve_callbacks().is_err());
        assert!(!envoy_log(Level::Info, "x"));
        assert_eq!(envoy_log_enabled(Level::Info), None);
    }

    #[test]
    fn guarded_turns_a_panic_into_the_fallback() {
        #[allow(clippy::panic, reason = "the test injects a panic")]
        let r = guarded("test", 7, || -> i32 { panic!("boom") });
        assert_eq!(r, 7);
        assert_eq!(guarded("test", 7, || 1), 1);
    }

    #[test]
    fn c_layouts() {
        use std::mem::size_of;
        assert_eq!(size_of::<EnvoyBuffer>(), 2 * size_of::<usize>());
        assert_eq!(size_of::<ModuleBuffer>(), 2 * size_of::<usize>());
        assert_eq!(size_of::<ModuleHttpHeader>(), 4 * size_of::<usize>());
    }
}
