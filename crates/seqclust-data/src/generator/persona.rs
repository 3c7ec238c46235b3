//! The planted personas: behaviour patterns that differ in order, action mix and timing
//! while drawing items from the same popularity-skewed catalogue.

use rand::{Rng, RngExt};

use super::catalog::Catalog;

/// Names of the personas, by id.
pub const PERSONAS: [&str; 8] = [
    "window_shopper",
    "decisive_buyer",
    "comparer",
    "category_cycler_fwd",
    "category_cycler_rev",
    "repeat_buyer",
    "night_owl",
    "cart_abandoner",
];

/// Action indices into `STANDARD_ACTIONS`.
pub(crate) const VIEW: u8 = 0;
pub(crate) const CLICK: u8 = 1;
pub(crate) const FAV: u8 = 2;
pub(crate) const CART: u8 = 3;
pub(crate) const BUY: u8 = 4;

/// One generated event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenEvent {
    /// User number (1-based).
    pub user: u64,
    /// Item number (1-based).
    pub item: u32,
    /// Category number (1-based).
    pub category: u32,
    /// Index into [`crate::STANDARD_ACTIONS`].
    pub action: u8,
    /// Unix seconds.
    pub ts: i64,
    /// Dwell seconds (one decimal).
    pub dwell: f32,
}

/// Categories the cyclers walk through, in cycle order.
const CYCLE: usize = 12;

pub(crate) struct UserGen<'a> {
    pub catalog: &'a Catalog,
    pub user: u64,
    pub t: i64,
    pub out: &'a mut Vec<GenEvent>,
}

fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

impl UserGen<'_> {
    fn emit(&mut self, item: u32, action: u8, dwell: f32) {
        self.out.push(GenEvent {
            user: self.user,
            item: item + 1,
            category: self.catalog.item_cat[item as usize] + 1,
            action,
            ts: self.t,
            dwell: (dwell * 10.0).round() / 10.0,
        });
    }

    fn step(&mut self, rng: &mut impl Rng, lo: f64, hi: f64) {
        self.t += uniform(rng, lo, hi).round() as i64;
    }

    /// Moves time to the next session start, at an hour drawn from the persona's rhythm.
    fn next_session(
        &mut self,
        rng: &mut impl Rng,
        persona: usize,
        min_gap_days: f64,
        max_gap_days: f64,
    ) {
        let gap = uniform(rng, min_gap_days, max_gap_days) * 86_400.0;
        let day = (self.t as f64 + gap).div_euclid(86_400.0) as i64 * 86_400;
        let hour = if persona == 6 {
            (uniform(rng, -2.5, 3.5) + 24.0) % 24.0
        } else {
            uniform(rng, 9.0, 21.0)
        };
        let mut start = day + (hour * 3600.0) as i64;
        if start <= self.t {
            start += 86_400;
        }
        self.t = start;
    }

    /// Generates about `target` events of persona `p`.
    pub fn run(&mut self, p: usize, target: usize, rng: &mut impl Rng) {
        let cat = self.catalog;
        let start = self.out.len();
        // per-user stable traits
        let staples: Vec<u32> = (0..3).map(|_| cat.item(rng)).collect();
        let cycle_pos = rng.random_range(0..CYCLE);
        let mut pos = cycle_pos;
        while self.out.len() - start < target {
            match p {
                // many views across popular categories, rare favs, never buys
                0 => {
                    self.next_session(rng, p, 0.5, 3.0);
                    let mut c = cat.category(rng);
                    for _ in 0..rng.random_range(6..16) {
                        if rng.random_bool(0.3) {
                            c = cat.category(rng);
                        }
                        let it = cat.item_in(c, rng);
                        let a = if rng.random_bool(0.05) { FAV } else { VIEW };
                        self.emit(it, a, uniform(rng, 5.0, 30.0) as f32);
                        self.step(rng, 15.0, 60.0);
                    }
                }
                // one or two views, then cart and buy of the same item, quickly
                1 => {
                    self.next_session(rng, p, 1.0, 6.0);
                    let c = cat.category(rng);
                    let mut it = cat.item_in(c, rng);
                    for _ in 0..rng.random_range(1..3) {
                        it = cat.item_in(c, rng);
                        self.emit(it, VIEW, uniform(rng, 20.0, 60.0) as f32);
                        self.step(rng, 5.0, 20.0);
                    }
                    self.emit(it, CART, uniform(rng, 2.0, 8.0) as f32);
                    self.step(rng, 5.0, 15.0);
                    self.emit(it, BUY, uniform(rng, 10.0, 30.0) as f32);
                }
                // long looks at a few items of one category, going back and forth, then buys one
                2 => {
                    self.next_session(rng, p, 1.0, 4.0);
                    let c = cat.category(rng);
                    let mut seen: Vec<u32> = Vec::new();
                    for _ in 0..rng.random_range(5..10) {
                        let it = if !seen.is_empty() && rng.random_bool(0.4) {
                            seen[rng.random_range(0..seen.len())]
                        } else {
                            let it = cat.item_in(c, rng);
                            seen.push(it);
                            it
                        };
                        self.emit(it, VIEW, uniform(rng, 30.0, 120.0) as f32);
                        self.step(rng, 30.0, 90.0);
                    }
                    if rng.random_bool(0.6) {
                        let it = seen[rng.random_range(0..seen.len())];
                        self.emit(it, CART, uniform(rng, 5.0, 15.0) as f32);
                        self.step(rng, 20.0, 60.0);
                        self.emit(it, BUY, uniform(rng, 10.0, 30.0) as f32);
                    }
                }
                // walk the popular categories in a fixed cycle, forwards (3) or backwards (4)
                3 | 4 => {
                    self.next_session(rng, p, 0.5, 3.0);
                    for _ in 0..rng.random_range(5..12) {
                        let c = cat.popular_cats[pos % cat.popular_cats.len().min(CYCLE)];
                        let it = cat.item_in(c, rng);
                        let a = if rng.random_bool(0.2) { CLICK } else { VIEW };
                        self.emit(it, a, uniform(rng, 5.0, 40.0) as f32);
                        self.step(rng, 10.0, 40.0);
                        let n = cat.popular_cats.len().min(CYCLE);
                        pos = if p == 3 {
                            (pos + 1) % n
                        } else {
                            (pos + n - 1) % n
                        };
                    }
                }
                // buys a few of the same staples on a weekly cycle
                5 => {
                    self.next_session(rng, p, 6.0, 8.0);
                    for _ in 0..rng.random_range(1..4) {
                        let it = staples[rng.random_range(0..staples.len())];
                        if rng.random_bool(0.5) {
                            self.emit(it, VIEW, uniform(rng, 3.0, 10.0) as f32);
                            self.step(rng, 5.0, 20.0);
                        }
                        self.emit(it, CART, uniform(rng, 2.0, 6.0) as f32);
                        self.step(rng, 5.0, 15.0);
                        self.emit(it, BUY, uniform(rng, 5.0, 15.0) as f32);
                        self.step(rng, 10.0, 40.0);
                    }
                }
                // quick clicks late at night
                6 => {
                    self.next_session(rng, p, 0.5, 2.0);
                    for _ in 0..rng.random_range(4..12) {
                        let it = cat.item(rng);
                        let a = if rng.random_bool(0.5) { CLICK } else { VIEW };
                        self.emit(it, a, uniform(rng, 1.0, 8.0) as f32);
                        self.step(rng, 3.0, 10.0);
                    }
                }
                // views, carts, leaves; rarely buys
                _ => {
                    self.next_session(rng, p, 0.5, 3.0);
                    let c = cat.category(rng);
                    let mut it = cat.item_in(c, rng);
                    for _ in 0..rng.random_range(2..6) {
                        it = cat.item_in(c, rng);
                        self.emit(it, VIEW, uniform(rng, 10.0, 40.0) as f32);
                        self.step(rng, 10.0, 40.0);
                    }
                    self.emit(it, CART, uniform(rng, 2.0, 8.0) as f32);
                    if rng.random_bool(0.3) {
                        self.step(rng, 10.0, 30.0);
                        self.emit(it, FAV, uniform(rng, 2.0, 5.0) as f32);
                    }
                    if rng.random_bool(0.05) {
                        self.step(rng, 30.0, 120.0);
                        self.emit(it, BUY, uniform(rng, 10.0, 30.0) as f32);
                    }
                }
            }
        }
        self.out.truncate(start + target.max(1));
    }
}
