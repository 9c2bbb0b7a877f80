//! Per-scenario isolation on a shared pipeline: every scenario publishes under sensor ids that
//! start with its own prefix (run id + scenario slug + a random suffix), and every query filters by
//! that prefix, so scenarios run concurrently without seeing each other's messages or rows.

/// A scenario's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioNamespace {
    /// `<run id>-<slug>-<4 hex>`; a valid sensor-id prefix (`[A-Za-z0-9._:-]`).
    pub prefix: String,
}

impl ScenarioNamespace {
    pub fn new(run_id: &str, scenario_name: &str) -> Self {
        let mut slug: String = scenario_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        slug.truncate(40);
        let slug = slug.trim_end_matches('-');
        let suffix: u16 = rand::random();
        Self { prefix: format!("{run_id}-{slug}-{suffix:04x}") }
    }

    /// The sensor id for a name used in a step (`"mic-1"` → `<prefix>.mic-1`).
    pub fn sensor(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Whether a sensor id belongs to this scenario.
    pub fn owns(&self, sensor_id: &str) -> bool {
        sensor_id.starts_with(&self.prefix) && sensor_id[self.prefix.len()..].starts_with('.')
    }

    /// The step-level name of one of our sensor ids.
    pub fn local_name<'a>(&self, sensor_id: &'a str) -> &'a str {
        sensor_id.strip_prefix(&self.prefix).and_then(|s| s.strip_prefix('.')).unwrap_or(sensor_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_ids_are_valid_and_owned() {
        let ns = ScenarioNamespace::new("r1", "Algorithm A: 440 Hz → ~440 Hz!");
        let id = ns.sensor("mic-1");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)), "{id}");
        assert!(ns.owns(&id));
        assert_eq!(ns.local_name(&id), "mic-1");
        let other = ScenarioNamespace::new("r1", "Algorithm A: 440 Hz → ~440 Hz!");
        assert!(!other.owns(&id), "two scenarios with one name still get distinct namespaces");
    }

    #[test]
    fn prefix_does_not_own_longer_prefixes() {
        let ns = ScenarioNamespace { prefix: "r-a-0001".into() };
        assert!(!ns.owns("r-a-00012.mic"));
    }
}
