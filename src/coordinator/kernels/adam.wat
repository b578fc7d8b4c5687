;; Adam's update for n float32 parameters in one pass, four lanes at a time (WebAssembly SIMD). The
;; source of adam-wasm.ts (`make kernels` assembles it; a test checks the two agree). Every f32x4 and
;; f32 operation is IEEE single precision, rounded once, in the order tfjs's AdamOptimizer applies
;; its kernels, so the result is bit for bit host-adam.ts's adamStep (and tfjs's Adam on cpu/wasm).
;;
;; adam(w, m, v, g, n, beta1, 1-beta1, beta2, 1-beta2, epsilon, -lr, 1-accBeta1, 1-accBeta2):
;; byte offsets of weights, first and second moments and gradient in this module's memory.
(module
  (memory (export "memory") 1)
  (func (export "adam")
    (param $w i32) (param $m i32) (param $v i32) (param $g i32) (param $n i32)
    (param $b1 f32) (param $c1 f32) (param $b2 f32) (param $c2 f32)
    (param $eps f32) (param $step f32) (param $o1 f32) (param $o2 f32)
    (local $at i32) (local $end i32) (local $tail i32)
    (local $B1 v128) (local $C1 v128) (local $B2 v128) (local $C2 v128)
    (local $EPS v128) (local $STEP v128) (local $O1 v128) (local $O2 v128)
    (local $gk v128) (local $m1 v128) (local $v1 v128)
    (local $gs f32) (local $ms f32) (local $vs f32)
    (local.set $B1 (f32x4.splat (local.get $b1)))
    (local.set $C1 (f32x4.splat (local.get $c1)))
    (local.set $B2 (f32x4.splat (local.get $b2)))
    (local.set $C2 (f32x4.splat (local.get $c2)))
    (local.set $EPS (f32x4.splat (local.get $eps)))
    (local.set $STEP (f32x4.splat (local.get $step)))
    (local.set $O1 (f32x4.splat (local.get $o1)))
    (local.set $O2 (f32x4.splat (local.get $o2)))
    ;; bytes covered four lanes at a time, then the rest one by one
    (local.set $end (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $tail (i32.shl (local.get $n) (i32.const 2)))
    (local.set $at (i32.const 0))
    (block $done4
      (loop $lanes
        (br_if $done4 (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $gk (v128.load align=4 (i32.add (local.get $g) (local.get $at))))
        (local.set $m1
          (f32x4.add
            (f32x4.mul (v128.load align=4 (i32.add (local.get $m) (local.get $at))) (local.get $B1))
            (f32x4.mul (local.get $gk) (local.get $C1))))
        (local.set $v1
          (f32x4.add
            (f32x4.mul (v128.load align=4 (i32.add (local.get $v) (local.get $at))) (local.get $B2))
            (f32x4.mul (f32x4.mul (local.get $gk) (local.get $gk)) (local.get $C2))))
        (v128.store align=4 (i32.add (local.get $m) (local.get $at)) (local.get $m1))
        (v128.store align=4 (i32.add (local.get $v) (local.get $at)) (local.get $v1))
        (v128.store align=4 (i32.add (local.get $w) (local.get $at))
          (f32x4.add
            (f32x4.mul
              (f32x4.div
                (f32x4.div (local.get $m1) (local.get $O1))
                (f32x4.add (f32x4.sqrt (f32x4.div (local.get $v1) (local.get $O2))) (local.get $EPS)))
              (local.get $STEP))
            (v128.load align=4 (i32.add (local.get $w) (local.get $at)))))
        (local.set $at (i32.add (local.get $at) (i32.const 16)))
        (br $lanes)))
    (block $done
      (loop $scalars
        (br_if $done (i32.ge_u (local.get $at) (local.get $tail)))
        (local.set $gs (f32.load (i32.add (local.get $g) (local.get $at))))
        (local.set $ms
          (f32.add
            (f32.mul (f32.load (i32.add (local.get $m) (local.get $at))) (local.get $b1))
            (f32.mul (local.get $gs) (local.get $c1))))
        (local.set $vs
          (f32.add
            (f32.mul (f32.load (i32.add (local.get $v) (local.get $at))) (local.get $b2))
            (f32.mul (f32.mul (local.get $gs) (local.get $gs)) (local.get $c2))))
        (f32.store (i32.add (local.get $m) (local.get $at)) (local.get $ms))
        (f32.store (i32.add (local.get $v) (local.get $at)) (local.get $vs))
        (f32.store (i32.add (local.get $w) (local.get $at))
          (f32.add
            (f32.mul
              (f32.div
                (f32.div (local.get $ms) (local.get $o1))
                (f32.add (f32.sqrt (f32.div (local.get $vs) (local.get $o2))) (local.get $eps)))
              (local.get $step))
            (f32.load (i32.add (local.get $w) (local.get $at)))))
        (local.set $at (i32.add (local.get $at) (i32.const 4)))
        (br $scalars)))))
