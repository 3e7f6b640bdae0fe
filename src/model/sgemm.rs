//! f32 matrix products over slices, through the `gemm` crate (candle's own matmul
//! backend, with its AVX-512 kernels enabled), checked so that no call can read or
//! write outside its slices.
//!
//! `gemm::gemm` takes raw pointers and strides; this is the only place in the model
//! code that calls it, and every view is checked against its slice first.
#![allow(unsafe_code)]

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// Columns `col..col + cols` of a row-major matrix whose rows are `stride` long
    /// (one attention head of a `(T, hidden)` block).
    pub fn cols_of(data: &'a [f32], rows: usize, stride: usize, col: usize, cols: usize) -> Self {
        View {
            data: data.get(col..).unwrap_or(&[]),
            rows,
            cols,
            rs: stride,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        fits(self.data.len(), self.rows, self.cols, self.rs, self.cs)
    }
}

/// A writable matrix view, laid out as `View`.
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> ViewMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> ViewMut<'a> {
        ViewMut {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    pub fn cols_of(
        data: &'a mut [f32],
        rows: usize,
        stride: usize,
        col: usize,
        cols: usize,
    ) -> ViewMut<'a> {
        let len = data.len();
        ViewMut {
            data: &mut data[col.min(len)..],
            rows,
            cols,
            rs: stride,
            cs: 1,
        }
    }
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    matches!(last, Some(l) if l < len && rs <= isize::MAX as usize && cs <= isize::MAX as usize)
}

/// Whether no two elements `(i, j)` of a `rows × cols` view share a place: the rows
/// lie one after another (row-major, `rs ≥ cols·cs`) or the columns do
/// (column-major). A destination with a stride of 0, or rows that run into each
/// other, would have threads of the pool writing one element at once.
fn distinct(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    let apart = |step: usize, inner_len: usize, inner_step: usize| {
        inner_len
            .checked_mul(inner_step)
            .is_some_and(|span| step >= span.max(1))
    };
    match (rows, cols) {
        (0, _) | (_, 0) | (1, 1) => true,
        (1, _) => cs >= 1,
        (_, 1) => rs >= 1,
        _ => (cs >= 1 && apart(rs, cols, cs)) || (rs >= 1 && apart(cs, rows, rs)),
    }
}

/// Whether a product runs on the rayon pool or on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    Pool,
    Serial,
}

/// `dst = scale * a · b`, or `dst += scale * a · b` with `accumulate`.
///
/// # Panics
/// When the shapes disagree or a view reaches outside its slice (a bug in the
/// caller, never a property of the data).
pub fn matmul(dst: ViewMut<'_>, a: View<'_>, b: View<'_>, accumulate: bool, scale: f32, par: Par) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    assert_eq!(
        (dst.rows, dst.cols),
        (a.rows, b.cols),
        "matmul: destination shape"
    );
    assert!(
        a.fits() && b.fits(),
        "matmul: a view reaches outside its slice"
    );
    assert!(
        fits(dst.data.len(), dst.rows, dst.cols, dst.rs, dst.cs),
        "matmul: the destination reaches outside its slice"
    );
    assert!(
        distinct(dst.rows, dst.cols, dst.rs, dst.cs),
        "matmul: elements of the destination overlap"
    );
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match par {
        Par::Pool => gemm::Parallelism::Rayon(0),
        Par::Serial => gemm::Parallelism::None,
    };
    // SAFETY: every element the product reads or writes is `(i, j)` with `i < rows`
    // and `j < cols` of its view, which `fits` checked lies inside the view's slice;
    // strides fit in `isize` (checked); no two destination elements share a place
    // (`distinct`), so the pool's threads never write one element together; `dst`
    // is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0f32;
                for p in 0..a.cols {
                    s += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
                }
                out[i * b.cols + j] = s;
            }
        }
        out
    }

    #[test]
    fn products_of_views_match_the_textbook_loop() {
        let x: Vec<f32> = (0..7 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..3 * 5).map(|i| (i as f32 * 0.11).cos()).collect();
        // x (7×5) · wᵀ (5×3), then accumulate twice that, scaled.
        let a = View::new(&x, 7, 5);
        let b = View::new(&w, 3, 5).t();
        let want = naive(a, b);
        let mut got = vec![1f32; 21];
        matmul(ViewMut::new(&mut got, 7, 3), a, b, false, 1.0, Par::Pool);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5);
        }
        matmul(ViewMut::new(&mut got, 7, 3), a, b, true, 2.0, Par::Serial);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 3.0 * w).abs() < 1e-4);
        }
        // Columns 2..4 of a 7×5 block times its transpose, into columns of a wider
        // destination.
        let h = View::cols_of(&x, 7, 5, 2, 2);
        let want = naive(h, h.t());
        let mut wide = vec![0f32; 7 * 9];
        matmul(
            ViewMut::cols_of(&mut wide, 7, 9, 2, 7),
            h,
            h.t(),
            false,
            1.0,
            Par::Serial,
        );
        for i in 0..7 {
            for j in 0..7 {
                assert!((wide[i * 9 + 2 + j] - want[i * 7 + j]).abs() < 1e-5);
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_view_past_its_slice_is_refused() {
        let x = vec![0f32; 10];
        let mut out = vec![0f32; 16];
        matmul(
            ViewMut::new(&mut out, 4, 4),
            View::new(&x, 4, 3),
            View::new(&x, 3, 4),
            false,
            1.0,
            Par::Serial,
        );
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn a_destination_that_overlaps_itself_is_refused() {
        let x = vec![1f32; 16];
        let mut out = vec![0f32; 16];
        // Rows 1 apart with columns 1 apart: element (0, 1) is element (1, 0).
        let dst = ViewMut {
            data: &mut out,
            rows: 4,
            cols: 4,
            rs: 1,
            cs: 1,
        };
        matmul(
            dst,
            View::new(&x, 4, 4),
            View::new(&x, 4, 4),
            false,
            1.0,
            Par::Pool,
        );
    }

    #[test]
    fn distinct_layouts_are_told_from_overlapping_ones() {
        assert!(distinct(4, 3, 3, 1) && distinct(4, 3, 1, 4) && distinct(4, 3, 9, 2));
        assert!(distinct(1, 5, 0, 1) && distinct(5, 1, 1, 0) && distinct(1, 1, 0, 0));
        assert!(!distinct(4, 3, 2, 1) && !distinct(4, 3, 0, 1) && !distinct(2, 2, 1, 1));
        assert!(!distinct(1, 5, 0, 0) && !distinct(4, 3, usize::MAX, usize::MAX));
    }
}
