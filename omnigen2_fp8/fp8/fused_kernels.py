"""Fused Triton kernels for the FP8 transformer block: what runs between the FP8 GEMMs, in as few passes as possible.

    modulated_rmsnorm_quant      x -> RMSNorm(x) * w * (1 + scale) -> e4m3 [M, Kp] + per-row scale (to_qkv's input)
    gated_residual_rmsnorm       h + gate * RMSNorm(y) * w -> h_new (the residual update after the feed-forward)
    gated_residual_rmsnorm_quant the same, and h_new's modulated norm -> e4m3 + scale (the feed-forward's input)
    qk_norm_rope                 per-head RMSNorm of q and k, then RoPE; bf16 out, or e4m3 padded for FP8 attention

Unfused, the block runs each of these as several torch kernels with a BF16 tensor between each pair, then the
activation quantization reads the result once more. Here each row is read once, kept in registers in float32, and
written once; padded GEMM outputs are read in place through their strides (no slicing copy). Three forms of the
row kernel (`RowLaunch`): whole rows padded to a power of two, chunked passes (later ones from L2), and resident
rows (each row in registers as five equal chunks, per-sample factors kept across 8 or 16 rows; the default from 4096
rows).

Numerics: the torch references in fp8/fused_reference.py (float32 inside, one rounding at the end). Encoding:
e4m3 through kernels.py's encoder (integer arithmetic on the CPU interpreter, the hardware conversion on CUDA,
same bits), and bf16 outputs through an integer round-to-nearest-even on the interpreter, which truncates instead.
Each kernel is registered as a torch custom op with a shape function, so torch.compile sees one opaque node.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels import HAS_TRITON, interpreter_enabled
from .primitives import AMAX_FLOOR, E4M3_MAX, FP8_DTYPE

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .kernels import _store_codes

    _FLOOR = tl.constexpr(AMAX_FLOOR)
    _MAX = tl.constexpr(E4M3_MAX)

    @triton.jit
    def _to_output(v, out_ptr, HW_CAST: tl.constexpr):
        """float32 v -> out_ptr's dtype, round to nearest even (the interpreter truncates bf16: round here)."""
        if not HW_CAST and out_ptr.dtype.element_ty == tl.bfloat16:
            bits = v.to(tl.int32, bitcast=True)
            v = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
        return v.to(out_ptr.dtype.element_ty)

    @triton.jit
    def _residual_norm_quant_kernel(h_ptr, y_ptr, out_ptr, q_ptr, qscale_ptr, gate_ptr, w_ptr, nw_ptr, nscale_ptr,
                                    L, D, KP, s_hn, s_hl, s_yn, s_yl, s_on, s_ol, s_gn, s_sn, s_qm, eps, next_eps,
                                    BLOCK: tl.constexpr, ROWS: tl.constexpr, SUB: tl.constexpr,
                                    RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr, QUANT: tl.constexpr,
                                    HAS_SCALE: tl.constexpr, ALIGN: tl.constexpr, HW_CAST: tl.constexpr):
        """Program (i, n) takes rows l = i * ROWS .. of sample n, SUB rows at a time, and loads the per-sample
        vectors (norm weights, gate, modulation) once for all of them. RESIDUAL: h + gate[n] * RMSNorm(y) * w ->
        out (rounded to out's dtype). QUANT: RMSNorm(row) * nw * (1 + nscale[n]) -> e4m3 q + float32 scale, where
        the row is the rounded h_new (RESIDUAL) or h itself (the plain modulated norm)."""
        n = tl.program_id(1).to(tl.int64)
        first = tl.program_id(0).to(tl.int64) * ROWS
        cols = tl.arange(0, BLOCK)[None, :]
        in_d = cols < D
        if RESIDUAL:
            w = tl.load(w_ptr + cols, mask=in_d, other=0.0).to(tl.float32)
            if HAS_GATE:
                gate = tl.load(gate_ptr + n * s_gn + cols, mask=in_d, other=0.0).to(tl.float32)
        if QUANT:
            nw = tl.load(nw_ptr + cols, mask=in_d, other=0.0).to(tl.float32)
            if HAS_SCALE:
                shift = 1.0 + tl.load(nscale_ptr + n * s_sn + cols, mask=in_d, other=0.0).to(tl.float32)
        for start in tl.static_range(0, ROWS, SUB):
            l = first + start + tl.arange(0, SUB)[:, None]  # [SUB, 1]
            row_ok = l < L
            valid = row_ok & in_d
            x = tl.load(h_ptr + n * s_hn + l * tl.multiple_of(s_hl, ALIGN) + cols, mask=valid,
                        other=0.0).to(tl.float32)
            if RESIDUAL:
                y = tl.load(y_ptr + n * s_yn + l * tl.multiple_of(s_yl, ALIGN) + cols, mask=valid, other=0.0)
                y = y.to(tl.float32)
                branch = y * tl.math.rsqrt(tl.sum(y * y, axis=1)[:, None] / D + eps)
                branch = branch * w
                if HAS_GATE:
                    branch = gate * branch
                stored = _to_output(x + branch, out_ptr, HW_CAST)
                tl.store(out_ptr + n * s_on + l * tl.multiple_of(s_ol, ALIGN) + cols, stored, mask=valid)
                x = stored.to(tl.float32)  # the next norm reads h_new as stored, as an unfused pass would
            if QUANT:
                v = x * tl.math.rsqrt(tl.sum(x * x, axis=1)[:, None] / D + next_eps)
                v = v * nw
                if HAS_SCALE:
                    v = v * shift
                scale = tl.maximum(tl.max(tl.abs(v), axis=1)[:, None], _FLOOR) / _MAX
                row = n * L + l
                tl.store(qscale_ptr + row, scale, mask=row_ok)
                _store_codes(v, scale, q_ptr + row * s_qm, cols, row_ok & (cols < KP), HW_CAST)

    @triton.jit
    def _residual_norm_quant_chunked_kernel(h_ptr, y_ptr, out_ptr, q_ptr, qscale_ptr, gate_ptr, w_ptr, nw_ptr,
                                            nscale_ptr, L, D, KP, s_hn, s_hl, s_yn, s_yl, s_on, s_ol, s_gn, s_sn,
                                            s_qm, eps, next_eps, CHUNK: tl.constexpr, SUB: tl.constexpr,
                                            RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr, QUANT: tl.constexpr,
                                            HAS_SCALE: tl.constexpr, ALIGN: tl.constexpr, HW_CAST: tl.constexpr):
        """The same function as `_residual_norm_quant_kernel`, for SUB rows of sample n per program, CHUNK values
        at a time (few registers, many programs in flight). Passes over a row: RESIDUAL sums y^2 first; then one
        pass writes h_new and, with QUANT, sums h_new^2 and the absmax of h_new * nw * (1 + nscale) (the norm's
        positive factor commutes with the absmax); QUANT's last pass recomputes the row (same operations, same
        bits) and writes e4m3. The later passes reread a row the program has just read, meant to come from L2."""
        n = tl.program_id(1).to(tl.int64)
        l = tl.program_id(0).to(tl.int64) * SUB + tl.arange(0, SUB)[:, None]  # [SUB, 1]
        row_ok = l < L
        span = tl.arange(0, CHUNK)[None, :]
        h_row = h_ptr + n * s_hn + l * tl.multiple_of(s_hl, ALIGN)
        y_row = y_ptr + n * s_yn + l * tl.multiple_of(s_yl, ALIGN)
        o_row = out_ptr + n * s_on + l * tl.multiple_of(s_ol, ALIGN)
        r_y = tl.zeros([SUB, 1], tl.float32)
        if RESIDUAL:
            acc = tl.zeros([SUB, CHUNK], tl.float32)
            for c0 in range(0, D, CHUNK):
                cols = c0 + span
                y = tl.load(y_row + cols, mask=row_ok & (cols < D), other=0.0).to(tl.float32)
                acc += y * y
            r_y = tl.math.rsqrt(tl.sum(acc, axis=1)[:, None] / D + eps)
        sq = tl.zeros([SUB, CHUNK], tl.float32)
        peak = tl.zeros([SUB, CHUNK], tl.float32)
        for c0 in range(0, D, CHUNK):
            cols = c0 + span
            x = _chunk_row(h_row, y_row, o_row, gate_ptr + n * s_gn, w_ptr, cols, row_ok & (cols < D), r_y,
                           RESIDUAL, HAS_GATE, True, HW_CAST)
            if QUANT:
                sq += x * x
                peak = tl.maximum(peak, tl.abs(_modulated(x, nw_ptr, nscale_ptr + n * s_sn, cols, D, HAS_SCALE)))
        if QUANT:
            r = tl.math.rsqrt(tl.sum(sq, axis=1)[:, None] / D + next_eps)
            scale = tl.maximum(tl.max(peak, axis=1)[:, None] * r, _FLOOR) / _MAX
            row = n * L + l
            tl.store(qscale_ptr + row, scale, mask=row_ok)
            for c0 in range(0, KP, CHUNK):
                cols = c0 + span
                x = _chunk_row(h_row, y_row, o_row, gate_ptr + n * s_gn, w_ptr, cols, row_ok & (cols < D), r_y,
                               RESIDUAL, HAS_GATE, False, HW_CAST)
                v = _modulated(x * r, nw_ptr, nscale_ptr + n * s_sn, cols, D, HAS_SCALE)
                _store_codes(v, scale, q_ptr + row * s_qm, cols, row_ok & (cols < KP), HW_CAST)

    @triton.jit
    def _residual_norm_quant_resident_kernel(h_ptr, y_ptr, out_ptr, q_ptr, qscale_ptr, gate_ptr, w_ptr, nw_ptr,
                                             nscale_ptr, L, D, KP, s_hn, s_hl, s_yn, s_yl, s_on, s_ol, s_gn, s_sn,
                                             s_qm, eps, next_eps, CW: tl.constexpr, ROWS: tl.constexpr,
                                             RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr, QUANT: tl.constexpr,
                                             HAS_SCALE: tl.constexpr, ALIGN: tl.constexpr, HW_CAST: tl.constexpr,
                                             PREFETCH: tl.constexpr):
        """The same function as `_residual_norm_quant_kernel`. Program (i, n) takes rows i * ROWS .. of sample n one
        at a time, each held in registers as five chunks of CW lanes (2528 values: 5 x 512, not 4096 lanes), read
        once. The chunks share one register layout, so a sum or maximum over the row adds them lane by lane and
        synchronises the warps once (a 2048 + 512 split reduced each piece on its own: 0.074 against 0.054 ms for
        residual + norm -> e4m3 at 8392 rows on an H200, results/row_kernels_h200_five_chunks.json). The
        per-sample vectors (norm weights, gate, modulation) are loaded once per program and combined (gate * w,
        nw * (1 + nscale)), not reloaded per row (that made the kernel about half again as slow,
        results/row_kernel_ablation_h200.json). Arithmetic as the reference's but for those products, taken first
        (float32 rounding apart, the same values). PREFETCH: the next row's loads are issued before this row's
        reductions, so they are in flight while it computes (one more row of registers)."""
        n = tl.program_id(1).to(tl.int64)
        first = tl.program_id(0).to(tl.int64) * ROWS
        c0 = tl.arange(0, CW)
        c1, c2, c3, c4 = c0 + CW, c0 + 2 * CW, c0 + 3 * CW, c0 + 4 * CW
        gate_row, nscale_row = gate_ptr + n * s_gn, nscale_ptr + n * s_sn
        # The per-sample factors, combined once per program: one float32 vector per chunk instead of two.
        if RESIDUAL:
            g0 = _gated_weight(w_ptr, gate_row, c0, D, HAS_GATE)
            g1 = _gated_weight(w_ptr, gate_row, c1, D, HAS_GATE)
            g2 = _gated_weight(w_ptr, gate_row, c2, D, HAS_GATE)
            g3 = _gated_weight(w_ptr, gate_row, c3, D, HAS_GATE)
            g4 = _gated_weight(w_ptr, gate_row, c4, D, HAS_GATE)
        if QUANT:  # nw * (1 + nscale): `_modulated` of ones (x1.0 is exact)
            m0 = _modulated(1.0, nw_ptr, nscale_row, c0, D, HAS_SCALE)
            m1 = _modulated(1.0, nw_ptr, nscale_row, c1, D, HAS_SCALE)
            m2 = _modulated(1.0, nw_ptr, nscale_row, c2, D, HAS_SCALE)
            m3 = _modulated(1.0, nw_ptr, nscale_row, c3, D, HAS_SCALE)
            m4 = _modulated(1.0, nw_ptr, nscale_row, c4, D, HAS_SCALE)
        last = first + ROWS + tl.zeros([1], tl.int64)
        if PREFETCH:
            coming = _resident_row(h_ptr, y_ptr, n, first + tl.zeros([1], tl.int64), L, last, s_hn, s_hl, s_yn, s_yl,
                                   c0, CW, D, RESIDUAL, ALIGN)
        for i in range(ROWS):
            l = first + i + tl.zeros([1], tl.int64)  # [1], not a scalar: Triton's interpreter rejects scalar masks
            ok = l < L
            if PREFETCH:
                x0, x1, x2, x3, x4, y0, y1, y2, y3, y4 = coming
                coming = _resident_row(h_ptr, y_ptr, n, l + 1, L, last, s_hn, s_hl, s_yn, s_yl, c0, CW, D,
                                       RESIDUAL, ALIGN)
            else:
                x0, x1, x2, x3, x4, y0, y1, y2, y3, y4 = _resident_row(h_ptr, y_ptr, n, l, L, last, s_hn, s_hl,
                                                                       s_yn, s_yl, c0, CW, D, RESIDUAL, ALIGN)
            if RESIDUAL:
                o_row = out_ptr + n * s_on + l * tl.multiple_of(s_ol, ALIGN)
                r_y = tl.math.rsqrt(tl.sum(y0 * y0 + y1 * y1 + y2 * y2 + y3 * y3 + y4 * y4, axis=0) / D + eps)
                x0 = _stored_residual(x0 + y0 * r_y * g0, o_row, c0, ok & (c0 < D), HW_CAST)
                x1 = _stored_residual(x1 + y1 * r_y * g1, o_row, c1, ok & (c1 < D), HW_CAST)
                x2 = _stored_residual(x2 + y2 * r_y * g2, o_row, c2, ok & (c2 < D), HW_CAST)
                x3 = _stored_residual(x3 + y3 * r_y * g3, o_row, c3, ok & (c3 < D), HW_CAST)
                x4 = _stored_residual(x4 + y4 * r_y * g4, o_row, c4, ok & (c4 < D), HW_CAST)
            if QUANT:
                sq = tl.sum(x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3 + x4 * x4, axis=0)
                peak = tl.max(tl.maximum(tl.maximum(tl.maximum(tl.abs(x0 * m0), tl.abs(x1 * m1)),
                                                    tl.maximum(tl.abs(x2 * m2), tl.abs(x3 * m3))),
                                         tl.abs(x4 * m4)), axis=0)
                r = tl.math.rsqrt(sq / D + next_eps)
                scale = tl.maximum(peak * r, _FLOOR) / _MAX  # the norm's positive factor commutes with the absmax
                row = n * L + l
                tl.store(qscale_ptr + row, scale, mask=ok)
                q_row = q_ptr + row * s_qm
                _store_codes(x0 * r * m0, scale, q_row, c0, ok & (c0 < KP), HW_CAST)
                _store_codes(x1 * r * m1, scale, q_row, c1, ok & (c1 < KP), HW_CAST)
                _store_codes(x2 * r * m2, scale, q_row, c2, ok & (c2 < KP), HW_CAST)
                _store_codes(x3 * r * m3, scale, q_row, c3, ok & (c3 < KP), HW_CAST)
                _store_codes(x4 * r * m4, scale, q_row, c4, ok & (c4 < KP), HW_CAST)

    @triton.jit
    def _resident_row(h_ptr, y_ptr, n, l, L, last, s_hn, s_hl, s_yn, s_yl, c0, CW: tl.constexpr, D,
                      RESIDUAL: tl.constexpr, ALIGN: tl.constexpr):
        """Row l ([1]) of sample n as the resident kernel holds it, in float32: h's five chunks, then y's (h's
        again without a residual part). Rows from `last` on (another program's) or past L read nothing (zeros)."""
        ok = (l < L) & (l < last)
        h_row = h_ptr + n * s_hn + l * tl.multiple_of(s_hl, ALIGN)
        x0, x1 = _chunk_f32(h_row, c0, D, ok), _chunk_f32(h_row, c0 + CW, D, ok)
        x2, x3 = _chunk_f32(h_row, c0 + 2 * CW, D, ok), _chunk_f32(h_row, c0 + 3 * CW, D, ok)
        x4 = _chunk_f32(h_row, c0 + 4 * CW, D, ok)
        y0, y1, y2, y3, y4 = x0, x1, x2, x3, x4
        if RESIDUAL:
            y_row = y_ptr + n * s_yn + l * tl.multiple_of(s_yl, ALIGN)
            y0, y1 = _chunk_f32(y_row, c0, D, ok), _chunk_f32(y_row, c0 + CW, D, ok)
            y2, y3 = _chunk_f32(y_row, c0 + 2 * CW, D, ok), _chunk_f32(y_row, c0 + 3 * CW, D, ok)
            y4 = _chunk_f32(y_row, c0 + 4 * CW, D, ok)
        return x0, x1, x2, x3, x4, y0, y1, y2, y3, y4

    @triton.jit
    def _chunk_f32(row_ptr, cols, D, ok):
        """row_ptr[cols] in float32 where the row is real (ok) and cols < D, else 0."""
        return tl.load(row_ptr + cols, mask=ok & (cols < D), other=0.0).to(tl.float32)

    @triton.jit
    def _gated_weight(w_ptr, gate_row, cols, D, HAS_GATE: tl.constexpr):
        """gate * w at `cols` in float32 (w alone without a gate): the residual branch's per-sample factor."""
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        if HAS_GATE:
            w = tl.load(gate_row + cols, mask=cols < D, other=0.0).to(tl.float32) * w
        return w

    @triton.jit
    def _stored_residual(h_new, o_row, cols, mask, HW_CAST: tl.constexpr):
        """h_new rounded to out's dtype and stored; returned as stored, in float32 (the next norm reads it so, as an
        unfused pass would)."""
        stored = _to_output(h_new, o_row, HW_CAST)
        tl.store(o_row + cols, stored, mask=mask)
        return stored.to(tl.float32)

    @triton.jit
    def _modulated(x, nw_ptr, nscale_row, cols, D, HAS_SCALE: tl.constexpr):
        """x * nw (* (1 + nscale)) at `cols`, in that order (the reference's)."""
        x = x * tl.load(nw_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        if HAS_SCALE:
            x = x * (1.0 + tl.load(nscale_row + cols, mask=cols < D, other=0.0).to(tl.float32))
        return x

    @triton.jit
    def _chunk_row(h_row, y_row, o_row, gate_row, w_ptr, cols, valid, r_y, RESIDUAL: tl.constexpr,
                   HAS_GATE: tl.constexpr, STORE: tl.constexpr, HW_CAST: tl.constexpr):
        """float32 values of the row chunk the quantization reads: h, or (RESIDUAL) h + gate * y * r_y * w rounded
        to out's dtype, stored when STORE."""
        x = tl.load(h_row + cols, mask=valid, other=0.0).to(tl.float32)
        if RESIDUAL:
            y = tl.load(y_row + cols, mask=valid, other=0.0).to(tl.float32)
            branch = y * r_y * tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
            if HAS_GATE:
                branch = tl.load(gate_row + cols, mask=valid, other=0.0).to(tl.float32) * branch
            stored = _to_output(x + branch, o_row, HW_CAST)
            if STORE:
                tl.store(o_row + cols, stored, mask=valid)
            x = stored.to(tl.float32)
        return x

    @triton.jit
    def _norm_rope_heads(x_ptr, x_tok, s_xh, o_ptr, o_tok, s_oh, H, w_ptr, c, s, descale_ptr, tok_ok, eps, HD, WIDTH,
                         TOK: tl.constexpr, BLOCK_D: tl.constexpr, FP8_OUT: tl.constexpr, HW_CAST: tl.constexpr):
        """H heads of TOK tokens (x_tok / o_tok: [TOK, 1] token offsets), one head at a time: each head's HD values
        are read contiguously, RMS-normalized, and adjacent pairs (2i, 2i+1) rotated by (c, s)[:, i] after
        splitting them apart in registers; WIDTH output columns are written (HD.. are zero padding)."""
        cols = tl.arange(0, BLOCK_D)[None, :]
        in_d = cols < HD
        w = tl.load(w_ptr + cols, mask=in_d, other=0.0).to(tl.float32)
        keep = tok_ok & (cols < WIDTH)
        if FP8_OUT:
            descale = tl.load(descale_ptr)
        for head in range(H):
            x = tl.load(x_ptr + x_tok + head * s_xh + cols, mask=tok_ok & in_d, other=0.0).to(tl.float32)
            x = x * tl.math.rsqrt(tl.sum(x * x, axis=1)[:, None] / HD + eps) * w
            even, odd = tl.split(tl.reshape(x, [TOK, BLOCK_D // 2, 2]))
            y = tl.reshape(tl.join(even * c - odd * s, even * s + odd * c), [TOK, BLOCK_D])
            out = o_ptr + o_tok + head * s_oh
            if FP8_OUT:
                _store_codes(y, descale, out, cols, keep, HW_CAST)
            else:
                tl.store(out + cols, _to_output(y, o_ptr, HW_CAST), mask=keep)

    @triton.jit
    def _qk_norm_rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, wq_ptr, wk_ptr, cos_ptr, sin_ptr, dq_ptr, dk_ptr,
                             T, L, HQ, HK, HALF, HD, WIDTH, s_qn, s_ql, s_qh, s_kn, s_kl, s_kh, s_qon, s_qol, s_qoh,
                             s_kon, s_kol, s_koh, s_cn, s_cl, s_sn, s_sl, q_eps, k_eps, TOK: tl.constexpr,
                             BLOCK_D: tl.constexpr, FP8_OUT: tl.constexpr, HW_CAST: tl.constexpr):
        """TOK consecutive tokens (flattened over N, L) per program: their cos/sin are loaded once and serve
        every q and k head."""
        t = tl.program_id(0).to(tl.int64) * TOK + tl.arange(0, TOK)[:, None]  # [TOK, 1]
        tok_ok = t < T
        n, l = t // L, t % L
        pairs = tl.arange(0, BLOCK_D // 2)[None, :]
        in_half = tok_ok & (pairs < HALF)
        c = tl.load(cos_ptr + n * s_cn + l * s_cl + pairs, mask=in_half, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + n * s_sn + l * s_sl + pairs, mask=in_half, other=0.0).to(tl.float32)
        _norm_rope_heads(q_ptr, n * s_qn + l * s_ql, s_qh, qo_ptr, n * s_qon + l * s_qol, s_qoh, HQ, wq_ptr, c, s,
                         dq_ptr, tok_ok, q_eps, HD, WIDTH, TOK, BLOCK_D, FP8_OUT, HW_CAST)
        _norm_rope_heads(k_ptr, n * s_kn + l * s_kl, s_kh, ko_ptr, n * s_kon + l * s_kol, s_koh, HK, wk_ptr, c, s,
                         dk_ptr, tok_ok, k_eps, HD, WIDTH, TOK, BLOCK_D, FP8_OUT, HW_CAST)


# --------------------------------------------------------------------------------------------- launchers
def _check_runnable(*tensors: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError("the fused block kernels need triton (pip install triton); or run a KernelPlan whose "
                           "quantize_impl is 'torch' (fp8/fused_reference.py)")
    if not all(t.is_cuda for t in tensors) and not interpreter_enabled():
        raise RuntimeError("the fused block kernels run on CUDA tensors (or on the CPU with TRITON_INTERPRET=1); "
                           "use fp8/fused_reference.py for CPU tensors")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_rows(what: str, t: torch.Tensor, n: int, d: int) -> None:
    if t.dim() != 3 or t.shape[0] != n or t.shape[2] != d:
        raise ValueError(f"{what} must be [N={n}, L, D={d}]; got {tuple(t.shape)}")


def _check_modulation(what: str, t: torch.Tensor | None, n: int, d: int) -> None:
    if t is not None and (t.dim() != 2 or tuple(t.shape) != (n, d)):
        raise ValueError(f"{what} must be [N, D] = [{n}, {d}] (one row per sample); got {tuple(t.shape)}")


@dataclass(frozen=True)
class RowLaunch:
    """How the row kernels (the modulated norm and the residual epilogues) are launched.

    chunk 0: whole rows in registers; each program takes `rows_per_program` consecutive rows of one sample,
    `sub_rows` at a time, and loads the per-sample vectors (norm weights, gate, modulation) once for all of them.
    chunk > 0 (a power of two): `_residual_norm_quant_chunked_kernel`, `sub_rows` rows per program (rows_per_program
    must equal it) read `chunk` values at a time in several passes, the later ones from L2: few registers per
    program, so many programs keep loads in flight. resident (sub_rows 1, chunk 0):
    `_residual_norm_quant_resident_kernel` instead, `rows_per_program` rows one after the other, each in registers
    as five equal chunks and read once, the per-sample vectors loaded once per program; with `prefetch`, the next
    row's loads are issued before the current row is computed. `num_warps` warps."""

    rows_per_program: int
    sub_rows: int
    num_warps: int
    chunk: int = 0
    resident: bool = False
    prefetch: bool = False

    def __post_init__(self):
        if min(self.rows_per_program, self.sub_rows, self.num_warps) < 1 or self.rows_per_program % self.sub_rows:
            raise ValueError(f"RowLaunch {self}: positive sizes, rows_per_program a multiple of sub_rows")
        if self.sub_rows & (self.sub_rows - 1) or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"RowLaunch {self}: sub_rows and num_warps must be powers of two")
        if self.chunk and (self.chunk < 16 or self.chunk & (self.chunk - 1) or self.rows_per_program != self.sub_rows):
            raise ValueError(f"RowLaunch {self}: a chunked launch has a power-of-two chunk >= 16 and "
                             "rows_per_program == sub_rows")
        if self.resident and (self.chunk or self.sub_rows != 1):
            raise ValueError(f"RowLaunch {self}: a resident launch takes its rows one at a time (sub_rows 1, chunk 0)")
        if self.prefetch and not self.resident:
            raise ValueError(f"RowLaunch {self}: prefetch is a form of the resident kernel (resident=True)")


def resident_chunk_width(width: int) -> int:
    """The chunk of the resident kernel for rows of `width` values: the smallest power of two whose five chunks
    cover the row (2528 -> 512)."""
    return max(triton.next_power_of_2(-(-width // 5)), 16)


def default_row_launch(block: int, rows: int, quant: bool = True, residual: bool = True) -> RowLaunch:
    """The launch used unless one is given, for `rows` rows per sample padded to `block` values, writing e4m3 or
    not, with a residual part or not (the plain modulated norm). H200 sweeps with 2520-wide rows:
    - from 4096 rows (the 1024 edit's passes and refiners), the resident kernel (five chunks per row) with 4 warps,
      16 rows per program from 8192 rows and 8 below, prefetching the next row except for residual + norm ->
      e4m3, which is fastest without (results/row_kernels_h200_five_chunks.json; at 8392 / 4204 rows residual +
      norm -> e4m3 0.054 / 0.029 ms against 0.074 / 0.043 for its earlier 2048 + 512 form with prefetch, the
      modulated norm 0.024 / 0.012 against 0.032 / 0.019, the residual + norm alone 0.041 / 0.022 against 0.045 /
      0.026);
    - below that the chunked kernel, one row per program in chunks of 512 with 4 warps (results/
      row_kernels_h200_prefetch.json at 2245 rows: within 7 % of the best launch of every op).
    Small rows keep whole rows in registers."""
    if block < 2048:
        return RowLaunch(4, 2, 4)
    if rows >= 4096:
        return RowLaunch(16 if rows >= 8192 else 8, 1, 4, resident=True, prefetch=not (quant and residual))
    return RowLaunch(1, 1, 4, 512)


@dataclass(frozen=True)
class RopeLaunch:
    """How `qk_norm_rope` is launched: `tokens_per_program` tokens (a power of two) share one program and their
    cos/sin rows, with `num_warps` warps."""

    tokens_per_program: int
    num_warps: int

    def __post_init__(self):
        for value in (self.tokens_per_program, self.num_warps):
            if value < 1 or value & (value - 1):
                raise ValueError(f"RopeLaunch {self}: powers of two")


def default_rope_launch(tokens: int) -> RopeLaunch:
    """H200 sweep (results/row_kernels_h200.json, 21 + 7 heads of 120): one warp per program is fastest; 4 tokens
    per program at 8392 tokens (0.048 ms against 0.127 for inductor's kernels), 1 at 4204 (0.029 against 0.036 for
    4) and at 2245 (0.016 against 0.039 for inductor)."""
    return RopeLaunch(4 if tokens >= 8192 else 1, 1)


def _launch_rows(h, y, gate, weight, eps, next_weight, next_scale, next_eps, k_padded, out_dtype, hw_cast,
                 launch: RowLaunch | None = None):
    """Shared launcher of `_residual_norm_quant_kernel`: y None = no residual part, k_padded 0 = no quantization."""
    if h.dim() != 3:
        raise ValueError(f"the hidden rows must be [N, L, D]; got {tuple(h.shape)}")
    n, seq, d = h.shape
    residual, quant = y is not None, k_padded > 0
    if residual:
        _check_rows("the branch output", y, n, d)
        _check_modulation("gate", gate, n, d)
    if quant:
        _check_modulation("scale", next_scale, n, d)
        if k_padded < d:
            raise ValueError(f"k_padded {k_padded} is smaller than the hidden size {d}")
    h = _unit_last(h)
    y = _unit_last(y) if residual else h
    gate = _unit_last(gate) if gate is not None else None
    next_scale = _unit_last(next_scale) if next_scale is not None else None
    _check_runnable(h)
    m = n * seq
    out = torch.empty((n, seq, d), dtype=out_dtype, device=h.device) if residual else h
    q = torch.empty((m, k_padded) if quant else (1, 1), dtype=FP8_DTYPE, device=h.device)
    qscale = torch.empty((m, 1) if quant else (1, 1), dtype=torch.float32, device=h.device)
    if m == 0:
        return out, q, qscale
    vec = 16 // h.element_size()
    aligned = all(t.data_ptr() % 16 == 0 and t.stride(1) % vec == 0 for t in (h, y, out))
    gate_t = gate if gate is not None else h
    scale_t = next_scale if next_scale is not None else h
    block = triton.next_power_of_2(max(k_padded, d))
    launch = launch or default_row_launch(block, seq, quant, residual)
    hw_cast = h.is_cuda if hw_cast is None else hw_cast
    grid = (triton.cdiv(seq, launch.rows_per_program), n)
    args = (h, y, out, q.view(torch.uint8), qscale, gate_t, weight, next_weight if quant else weight, scale_t, seq, d,
            k_padded, h.stride(0), h.stride(1), y.stride(0), y.stride(1), out.stride(0), out.stride(1),
            gate_t.stride(0), scale_t.stride(0), q.stride(0), eps, next_eps)
    flags = dict(RESIDUAL=residual, HAS_GATE=gate is not None, QUANT=quant, HAS_SCALE=next_scale is not None,
                 ALIGN=vec if aligned else 1, HW_CAST=hw_cast, num_warps=launch.num_warps)
    if launch.resident:
        _residual_norm_quant_resident_kernel[grid](*args, CW=resident_chunk_width(max(k_padded, d)),
                                                   ROWS=launch.rows_per_program, PREFETCH=launch.prefetch, **flags)
    elif launch.chunk:
        _residual_norm_quant_chunked_kernel[grid](*args, CHUNK=launch.chunk, SUB=launch.sub_rows, **flags)
    else:
        _residual_norm_quant_kernel[grid](*args, BLOCK=block, ROWS=launch.rows_per_program, SUB=launch.sub_rows,
                                          **flags)
    return out, q, qscale


def modulated_rmsnorm_quant_triton(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, eps: float,
                                   k_padded: int, hw_cast: bool | None = None,
                                   launch: RowLaunch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused `fused_reference.modulated_rmsnorm_quant`: x [N, L, D] -> (e4m3 [N*L, k_padded], float32 [N*L, 1])."""
    _, q, qscale = _launch_rows(x, None, None, weight, 0.0, weight, scale, eps, k_padded, x.dtype, hw_cast, launch)
    return q, qscale


def gated_residual_rmsnorm_triton(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
                                  weight: torch.Tensor, eps: float, hw_cast: bool | None = None,
                                  launch: RowLaunch | None = None) -> torch.Tensor:
    """Fused `fused_reference.gated_residual_rmsnorm`: h, y [N, L, D] -> h_new [N, L, D] in h's dtype."""
    out, _, _ = _launch_rows(h, y, gate, weight, eps, None, None, 0.0, 0, h.dtype, hw_cast, launch)
    return out


def gated_residual_rmsnorm_quant_triton(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
                                        weight: torch.Tensor, eps: float, next_weight: torch.Tensor,
                                        next_scale: torch.Tensor | None, next_eps: float, k_padded: int,
                                        hw_cast: bool | None = None, launch: RowLaunch | None = None):
    """Fused `fused_reference.gated_residual_rmsnorm_quant`: -> (h_new [N, L, D], e4m3 [N*L, k_padded],
    float32 [N*L, 1])."""
    if k_padded <= 0:
        raise ValueError(f"k_padded must be positive; got {k_padded}")
    return _launch_rows(h, y, gate, weight, eps, next_weight, next_scale, next_eps, k_padded, h.dtype, hw_cast,
                        launch)


def qk_norm_rope_triton(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                        cos: torch.Tensor, sin: torch.Tensor, q_eps: float, k_eps: float,
                        q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
                        head_dim_padded: int = 0, hw_cast: bool | None = None,
                        launch: RopeLaunch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused `fused_reference.qk_norm_rope`: q [N, L, Hq, hd], k [N, L, Hkv, hd] (any strides, unit stride in hd)
    -> new contiguous q, k in q's dtype, or with descales e4m3 [N, L, H, head_dim_padded]. Token-major like the
    input: attention's output then has the same layout, and [N, L, H*D] is a view of it (head-major q and k
    cost an extra transposing copy of the output, 3.9-5.4 ms per 1024 step on an H200,
    results/perf_recipes_h200_heads_major_trial.json)."""
    n, seq, hq, hd = q.shape
    if k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != hd or hd % 2:
        raise ValueError(f"q [N, L, Hq, hd] and k [N, L, Hkv, hd] with an even hd must agree; got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if cos.shape != (n, seq, hd // 2) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin must be [N, L, hd/2] = {(n, seq, hd // 2)}; got {tuple(cos.shape)}, "
                         f"{tuple(sin.shape)}")
    fp8_out = q_descale is not None
    if fp8_out != (k_descale is not None) or (fp8_out and head_dim_padded < hd):
        raise ValueError("FP8 output needs both descales and head_dim_padded >= the head dim "
                         f"(got head_dim_padded={head_dim_padded}, head dim {hd})")
    q, k, cos, sin = (_unit_last(t) for t in (q, k, cos, sin))
    _check_runnable(q)
    width = head_dim_padded if fp8_out else hd
    dtype = FP8_DTYPE if fp8_out else q.dtype
    q_out, k_out = (torch.empty((n, seq, h, width), dtype=dtype, device=q.device) for h in (hq, k.shape[2]))
    if n * seq == 0:
        return q_out, k_out
    qo, ko = (t.view(torch.uint8) for t in (q_out, k_out)) if fp8_out else (q_out, k_out)
    dq = q_descale if fp8_out else cos
    dk = k_descale if fp8_out else cos
    hw_cast = q.is_cuda if hw_cast is None else hw_cast
    tokens = n * seq
    launch = launch or default_rope_launch(tokens)
    _qk_norm_rope_kernel[(triton.cdiv(tokens, launch.tokens_per_program),)](
        q, k, qo, ko, q_weight, k_weight, cos, sin, dq, dk, tokens, seq, hq, k.shape[2], hd // 2, hd, width,
        *q.stride()[:3], *k.stride()[:3], *qo.stride()[:3], *ko.stride()[:3], *cos.stride()[:2], *sin.stride()[:2],
        q_eps, k_eps, TOK=launch.tokens_per_program, BLOCK_D=triton.next_power_of_2(width), FP8_OUT=fp8_out,
        HW_CAST=hw_cast, num_warps=launch.num_warps)
    return q_out, k_out


def fused_qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                       cos: torch.Tensor, sin: torch.Tensor, q_eps: float, k_eps: float) -> tuple[torch.Tensor, ...]:
    """QK-norm + RoPE in the model dtype for `Attention.qk_norm_rope` (every precision, CUDA inputs): the custom op
    under torch.compile (inductor's own fusion of these ops runs at a third of the speed), the launcher eager."""
    if torch.compiler.is_compiling():
        return torch.ops.omnigen2_fp8.qk_norm_rope(q, k, q_weight, k_weight, cos, sin, q_eps, k_eps, None, None, 0,
                                                   q.is_cuda)
    return qk_norm_rope_triton(q, k, q_weight, k_weight, cos, sin, q_eps, k_eps)


# --------------------------------------------------------------------------------------------- custom ops
# torch.compile sees each kernel as one op with a shape function (no graph break; dynamic token counts).
@torch.library.custom_op("omnigen2_fp8::modulated_rmsnorm_quant", mutates_args=())
def modulated_rmsnorm_quant_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, eps: float,
                               k_padded: int, hw_cast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return modulated_rmsnorm_quant_triton(x, weight, scale, eps, k_padded, hw_cast)


@modulated_rmsnorm_quant_op.register_fake
def _(x, weight, scale, eps, k_padded, hw_cast):
    m = x.shape[0] * x.shape[1]
    return x.new_empty((m, k_padded), dtype=FP8_DTYPE), x.new_empty((m, 1), dtype=torch.float32)


@torch.library.custom_op("omnigen2_fp8::gated_residual_rmsnorm", mutates_args=())
def gated_residual_rmsnorm_op(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor,
                              eps: float, hw_cast: bool) -> torch.Tensor:
    return gated_residual_rmsnorm_triton(h, y, gate, weight, eps, hw_cast)


@gated_residual_rmsnorm_op.register_fake
def _(h, y, gate, weight, eps, hw_cast):
    return torch.empty(h.shape, dtype=h.dtype, device=h.device)


@torch.library.custom_op("omnigen2_fp8::gated_residual_rmsnorm_quant", mutates_args=())
def gated_residual_rmsnorm_quant_op(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
                                    weight: torch.Tensor, eps: float, next_weight: torch.Tensor,
                                    next_scale: torch.Tensor | None, next_eps: float, k_padded: int,
                                    hw_cast: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_residual_rmsnorm_quant_triton(h, y, gate, weight, eps, next_weight, next_scale, next_eps, k_padded,
                                               hw_cast)


@gated_residual_rmsnorm_quant_op.register_fake
def _(h, y, gate, weight, eps, next_weight, next_scale, next_eps, k_padded, hw_cast):
    m = h.shape[0] * h.shape[1]
    return (torch.empty(h.shape, dtype=h.dtype, device=h.device), h.new_empty((m, k_padded), dtype=FP8_DTYPE),
            h.new_empty((m, 1), dtype=torch.float32))


@torch.library.custom_op("omnigen2_fp8::qk_norm_rope", mutates_args=())
def qk_norm_rope_op(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, q_eps: float, k_eps: float,
                    q_descale: torch.Tensor | None, k_descale: torch.Tensor | None, head_dim_padded: int,
                    hw_cast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return qk_norm_rope_triton(q, k, q_weight, k_weight, cos, sin, q_eps, k_eps, q_descale, k_descale,
                               head_dim_padded, hw_cast)


@qk_norm_rope_op.register_fake
def _(q, k, q_weight, k_weight, cos, sin, q_eps, k_eps, q_descale, k_descale, head_dim_padded, hw_cast):
    fp8_out = q_descale is not None
    width = head_dim_padded if fp8_out else q.shape[3]
    dtype = FP8_DTYPE if fp8_out else q.dtype
    return tuple(torch.empty((*t.shape[:3], width), dtype=dtype, device=t.device) for t in (q, k))
