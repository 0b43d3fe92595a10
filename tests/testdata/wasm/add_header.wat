;; A minimal proxy-wasm (ABI 0.2.1) HTTP filter: adds the response header "x-wasm: VALUE", where VALUE is
;; the first string value of the plugin configuration JSON (e.g. {"value":"hello"} gives "hello"),
;; or "on" when the configuration is empty.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..7: unused; 8: returned buffer pointer; 12: returned buffer size; 16: header name; 32: default value
  (data (i32.const 16) "x-wasm")
  (data (i32.const 32) "on")
  (global $heap (mut i32) (i32.const 1024))
  (global $value_ptr (mut i32) (i32.const 32))
  (global $value_len (mut i32) (i32.const 2))

  (func (export "proxy_abi_version_0_2_1"))

  ;; bump allocator, 8-byte aligned; grows memory when needed
  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7))
                             (i32.const -8)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (unreachable)))
        (br $grow)))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))

  ;; VALUE = the bytes between the 3rd and 4th '"' of the configuration
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $quotes i32) (local $start i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 1))))
    ;; buffer type 7: the plugin configuration
    (if (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 8) (i32.const 12))
      (then (return (i32.const 0))))
    (local.set $p (i32.load (i32.const 8)))
    (local.set $end (i32.add (local.get $p) (i32.load (i32.const 12))))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 34))
          (then
            (local.set $quotes (i32.add (local.get $quotes) (i32.const 1)))
            (if (i32.eq (local.get $quotes) (i32.const 3))
              (then (local.set $start (i32.add (local.get $p) (i32.const 1)))))
            (if (i32.eq (local.get $quotes) (i32.const 4))
              (then
                (global.set $value_ptr (local.get $start))
                (global.set $value_len (i32.sub (local.get $p) (local.get $start)))
                (br $done)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (i32.const 1))

  ;; map type 2: the response headers; returns 0 (continue)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 6)
                            (global.get $value_ptr) (global.get $value_len)))
    (i32.const 0))
)
