//! One collector of field violations: every check of a request adds to it, and it becomes the
//! single INVALID_ARGUMENT error listing them all, bounded in size.

use super::error::{Error, FieldViolation};

/// Most field violations one error lists.
pub const MAX_VIOLATIONS: usize = 50;
/// Most bytes of field violations one error lists (about 4 KB once base64-encoded).
const MAX_DETAILS_BYTES: usize = 3000;

/// The violations found so far, in the order the checks ran.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is wrong, saying why.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// The value of a passed check; a failed one is recorded under `field` and gives `None`.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        self.check_at(|| field.into(), result)
    }

    /// `check` for a field whose name is made only if the check failed (`targets[i]`, which
    /// would otherwise be formatted for every target of every request).
    pub fn check_at<T, E: std::fmt::Display>(
        &mut self,
        field: impl FnOnce() -> String,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.add(field(), e.to_string());
                None
            }
        }
    }

    /// `Ok` when nothing was recorded, else one [`Error::InvalidArgument`] with what fits.
    pub fn into_result(self) -> Result<(), Error> {
        let mut v = self.0;
        if v.is_empty() {
            return Ok(());
        }
        // Error details travel base64-encoded in a trailer, and some clients refuse metadata
        // over 8 KB: list violations while they fit in a few KB.
        let mut size = 0;
        let fit = v
            .iter()
            .take(MAX_VIOLATIONS)
            .take_while(|f| {
                size += f.field.len() + f.description.len() + 8;
                size <= MAX_DETAILS_BYTES
            })
            .count();
        if v.len() > fit {
            let more = v.len() - fit;
            v.truncate(fit);
            v.push(FieldViolation::new(
                "targets",
                format!("{more} more violations not listed; fix the ones above and retry"),
            ));
        }
        Err(Error::InvalidArgument(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_record_failures_in_order_and_the_list_is_bounded() {
        let mut v = Violations::default();
        assert_eq!(v.check("a", Ok::<_, String>(1)), Some(1));
        assert!(Violations::default().into_result().is_ok());
        assert_eq!(v.check::<(), _>("b", Err("bad")), None);
        v.add("c", "worse");
        let Err(Error::InvalidArgument(list)) = v.into_result() else {
            panic!("violations expected")
        };
        assert_eq!(
            list,
            [
                FieldViolation::new("b", "bad"),
                FieldViolation::new("c", "worse")
            ]
        );

        let mut many = Violations::default();
        for i in 0..80 {
            many.add(format!("targets[{i}]"), "x");
        }
        let Err(Error::InvalidArgument(list)) = many.into_result() else {
            panic!("violations expected")
        };
        assert_eq!(list.len(), MAX_VIOLATIONS + 1);
        assert_eq!(
            list[MAX_VIOLATIONS].description,
            "30 more violations not listed; fix the ones above and retry"
        );
    }
}
