//! The version under test against its baseline over the same window, as Kayenta judges a
//! canary: is its error rate higher (a two-proportion z-test), are its requests slower (a
//! Mann-Whitney rank test on Envoy's latency histograms)? Each test gives the one-sided
//! p-value: the chance of a difference this large or larger if both versions behaved alike.
//! A rollout check fails a relative limit only when the difference is over the limit *and*
//! that chance is below `1 - confidence`, so noise at low traffic does not roll back.
//!
//! Both use the normal approximation (what scipy's `asymptotic` methods compute); the unit
//! tests hold scipy's answers on fixed inputs.

use serde::{Deserialize, Serialize};

/// One test's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// The standardised difference (positive: the tested version is worse).
    pub z: f64,
    /// One-sided p-value.
    pub p: f64,
}

/// Whether the tested version's error rate is higher: pooled two-proportion z-test on
/// `errors` of `requests` against the baseline's. `None` without requests on either side;
/// with no difference to see (both rates 0, or both 1) z is 0 and p is 1/2.
pub fn error_rate_higher(
    errors: f64,
    requests: f64,
    baseline_errors: f64,
    baseline_requests: f64,
) -> Option<Test> {
    if requests <= 0.0 || baseline_requests <= 0.0 {
        return None;
    }
    let pooled = (errors + baseline_errors) / (requests + baseline_requests);
    let se = (pooled * (1.0 - pooled) * (1.0 / requests + 1.0 / baseline_requests)).sqrt();
    let z = if se > 0.0 {
        (errors / requests - baseline_errors / baseline_requests) / se
    } else {
        0.0
    };
    Some(Test {
        z,
        p: upper_tail(z),
    })
}

/// Whether the tested version's latencies are higher: Mann-Whitney U on two histograms over
/// the same buckets (requests per bucket; requests in one bucket are ties), one-sided, with
/// the tie correction and a continuity correction. `None` when either is empty.
pub fn latency_higher(tested: &[f64], baseline: &[f64]) -> Option<Test> {
    let n1: f64 = tested.iter().sum();
    let n2: f64 = baseline.iter().sum();
    if n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    // U counts the (tested, baseline) pairs where the tested request was slower, ties half.
    let mut u = 0.0;
    let mut baseline_below = 0.0;
    let mut ties = 0.0;
    for (a, b) in tested.iter().zip(baseline) {
        u += a * (baseline_below + 0.5 * b);
        baseline_below += b;
        let t = a + b;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let z = if variance > 0.0 {
        (u - mean - 0.5) / variance.sqrt()
    } else {
        0.0
    };
    Some(Test {
        z,
        p: upper_tail(z),
    })
}

/// P(Z > z) for a standard normal Z.
fn upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative agreement with scipy 1.17.1 (`scipy.stats.norm.sf`, a pooled z-test written
    /// with it, and `mannwhitneyu(x, y, alternative="greater", method="asymptotic")` on the
    /// histograms expanded to bucket numbers).
    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1e-300)
    }

    #[test]
    fn the_normal_tail_is_scipys() {
        for (z, p) in [
            (1.644_853_626_951_472_2, 0.050_000_000_000_000_044),
            (-1.0, 0.841_344_746_068_542_9),
            (3.0, 0.001_349_898_031_630_093_3),
            (8.0, 6.220_960_574_271_74e-16),
        ] {
            assert!(
                close(upper_tail(z), p),
                "{z}: {} against {p}",
                upper_tail(z)
            );
        }
    }

    #[test]
    fn error_rates_are_compared_as_scipy_does() {
        for ((e1, n1, e2, n2), (z, p)) in [
            (
                (30.0, 1000.0, 10.0, 1000.0),
                (3.194_382_824_999_699_3, 0.000_700_650_790_480_106_9),
            ),
            (
                (5.0, 100.0, 4.0, 100.0),
                (0.341_096_340_064_433_96, 0.366_515_528_199_962_9),
            ),
            (
                (12.0, 200.0, 30.0, 2000.0),
                (4.434_079_592_174_291_5, 4.623_323_192_826_147e-6),
            ),
            ((50.0, 50.0, 0.0, 50.0), (10.0, 7.619_853_024_160_47e-24)),
        ] {
            let t = error_rate_higher(e1, n1, e2, n2).unwrap();
            assert!(
                close(t.z, z) && close(t.p, p),
                "{e1}/{n1} vs {e2}/{n2}: {t:?}"
            );
        }
        // scipy gives NaN here; no difference to see is no evidence of one.
        assert_eq!(
            error_rate_higher(0.0, 50.0, 0.0, 500.0),
            Some(Test { z: 0.0, p: 0.5 })
        );
        assert_eq!(error_rate_higher(1.0, 10.0, 0.0, 0.0), None);
    }

    #[test]
    fn latencies_are_compared_as_scipy_does() {
        for (a, b, p) in [
            (
                &[0.0, 0.0, 5.0, 20.0, 50.0, 20.0, 5.0][..],
                &[0.0, 0.0, 5.0, 20.0, 50.0, 20.0, 5.0][..],
                0.500_525_937_012_241_7,
            ),
            (
                &[0.0, 0.0, 0.0, 5.0, 20.0, 50.0, 20.0],
                &[0.0, 5.0, 20.0, 50.0, 20.0, 5.0, 0.0],
                9.285_327_720_030_105e-27,
            ),
            (
                &[1.0, 2.0, 3.0, 4.0],
                &[4.0, 3.0, 2.0, 1.0],
                0.028_042_686_516_216_69,
            ),
            (
                &[0.0, 0.0, 0.0, 0.0, 10.0, 30.0, 10.0],
                &[5.0, 30.0, 10.0, 5.0, 0.0, 0.0, 0.0],
                3.622_187_028_220_966e-19,
            ),
            (
                &[3.0, 7.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                &[2.0, 8.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                0.655_556_598_369_195_6,
            ),
        ] {
            let t = latency_higher(a, b).unwrap();
            assert!(close(t.p, p), "{a:?} vs {b:?}: {t:?}, scipy {p}");
        }
        assert_eq!(latency_higher(&[0.0; 3], &[1.0; 3]), None);
    }
}
