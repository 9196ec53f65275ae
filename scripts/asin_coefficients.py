"""The coefficients of `ntk`'s branch-free arcsin polynomial (src/infinite/fastmath.rs).

arcsin y = y + y t P(t) with t = y^2 in [0, 1/4]. P is interpolated at the 13 Chebyshev
nodes of [0, 1/4] in 60-digit arithmetic (mpmath) and written in the monomial basis,
each coefficient rounded to the nearest f64. Prints the Rust constant and the largest
error the truncation adds to arccos (in units of f64 epsilon, on a grid of 20,001 t).

    python3 scripts/asin_coefficients.py
"""

import mpmath as mp

mp.mp.dps = 60
TERMS = 13
LOW, HIGH = mp.mpf(0), mp.mpf(1) / 4


def p(t):
    """(arcsin(sqrt t)/sqrt t - 1)/t, its limit 1/6 at t = 0."""
    t = mp.mpf(t)
    if t == 0:
        return mp.mpf(1) / 6
    y = mp.sqrt(t)
    return (mp.asin(y) / y - 1) / t


def coefficients(n):
    middle, half = (LOW + HIGH) / 2, (HIGH - LOW) / 2
    nodes = [middle + half * mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    vandermonde = mp.matrix([[x**j for j in range(n)] for x in nodes])
    c = mp.lu_solve(vandermonde, mp.matrix([p(x) for x in nodes]))
    return [float(c[j]) for j in range(n)]


def main():
    c = coefficients(TERMS)
    worst = mp.mpf(0)
    for i in range(20_001):
        t = HIGH * i / 20_000
        approx = sum(mp.mpf(cj) * mp.mpf(t) ** j for j, cj in enumerate(c))
        # arccos = 2 arcsin y on the upper branch: the error is 2 y t |P~ - P|.
        worst = max(worst, 2 * mp.sqrt(t) * t * abs(approx - p(t)))
    print(f"const COEFFS: [f64; TERMS] = [")
    for cj in c:
        print(f"    {cj!r},")
    print("];")
    print(f"// truncation error in arccos: {float(worst / mp.mpf(2) ** -52):.3f} epsilon")


if __name__ == "__main__":
    main()
