//! The world of one: training on a single process runs through the same code path.

use crate::{Collective, Error, Result};

/// A group with only this process in it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }

    fn broadcast(&mut self, _data: &mut Vec<u8>, root: usize) -> Result<()> {
        if root != 0 {
            return Err(Error::Invalid(format!(
                "broadcast root {root} in a world of 1"
            )));
        }
        Ok(())
    }
}
