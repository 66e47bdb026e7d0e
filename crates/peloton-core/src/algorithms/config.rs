//! [`AlgorithmConfig`]: a config file's `[algorithm]` table, dispatched through the registry.
//!
//! Read: the table is buffered, `name` picks the registry entry, and the rest is handed to that
//! entry's config type (which refuses unknown keys). Written: `name` first, then the config's
//! keys in their declaration order — the same bytes the closed enum of earlier versions wrote,
//! so a run folder's `config.toml` and its checkpoint fingerprints do not change.

use std::fmt::Debug;

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{self, Impossible, Serialize, SerializeMap, SerializeStruct, Serializer};

use super::registry::{self, AlgorithmSpec, DynSpec, Registration, RunShape, Worker};
use super::LsgdConfig;
use crate::optim::OptimizerConfig;
use crate::Result;

/// One algorithm with its keys, selected by `name` in a config file from the
/// [registry](super::registry).
pub struct AlgorithmConfig(Box<dyn DynSpec>);

impl AlgorithmConfig {
    /// The config of a registered algorithm, from its typed config.
    pub fn new<T: AlgorithmSpec>(config: T) -> Self {
        AlgorithmConfig(Box::new(config))
    }

    /// The `name` of this algorithm in config files.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// True for asynchronous algorithms (no per-step synchronization; see
    /// [`super::asynchronous`]).
    pub fn is_async(&self) -> bool {
        self.0.is_async()
    }

    /// True when the algorithm keeps a center variable (evaluation model "center").
    pub fn has_center(&self) -> bool {
        self.0.has_center()
    }

    /// The typed config, when this is the algorithm whose config type is `T`.
    pub fn get<T: AlgorithmSpec>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The typed config, mutably, when this is the algorithm whose config type is `T`.
    pub fn get_mut<T: AlgorithmSpec>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }

    /// Every registered algorithm, for `peloton list`.
    pub fn catalog() -> Vec<Registration> {
        registry::registered()
    }

    /// Checks the config against the run shape; every error names the offending key.
    /// `seed` is the run seed (random gossip activations are drawn from it).
    pub fn validate(&self, workers: usize, seed: u64, optimizer: &OptimizerConfig) -> Result<()> {
        self.0.validate(&RunShape {
            workers,
            seed,
            optimizer,
        })
    }

    /// Builds one worker's algorithm state for a model of `len` parameters.
    pub fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Worker> {
        self.0.build(run, len)
    }
}

impl Registration {
    /// The configs the registry-driven test suites run for this algorithm: the default (the
    /// table holding only `name`, when every key has a default) and
    /// [`AlgorithmSpec::variants`].
    pub fn test_configs(&self) -> Vec<AlgorithmConfig> {
        self.test_specs().into_iter().map(AlgorithmConfig).collect()
    }
}

impl Default for AlgorithmConfig {
    fn default() -> Self {
        AlgorithmConfig::new(LsgdConfig::default())
    }
}

impl Clone for AlgorithmConfig {
    fn clone(&self) -> Self {
        AlgorithmConfig(self.0.clone_box())
    }
}

impl PartialEq for AlgorithmConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_dyn(other.0.as_ref())
    }
}

impl Debug for AlgorithmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:?}", self.name(), self.0)
    }
}

impl<'de> Deserialize<'de> for AlgorithmConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        // toml's value keeps every float (NaN included, which the range checks then name).
        let mut table = match toml::Value::deserialize(deserializer)? {
            toml::Value::Table(table) => table,
            other => {
                return Err(de::Error::custom(format!(
                    "invalid type: {}, expected an algorithm table with a `name`",
                    other.type_str()
                )))
            }
        };
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            Some(other) => {
                return Err(de::Error::custom(format!(
                    "invalid type: {}, expected the algorithm's name as a string",
                    other.type_str()
                )))
            }
            None => return Err(de::Error::missing_field("name")),
        };
        let entry = registry::lookup(&name)
            .ok_or_else(|| de::Error::custom(registry::unknown_name(&name)))?;
        (entry.parse)(toml::Value::Table(table))
            .map(AlgorithmConfig)
            .map_err(|e| de::Error::custom(e.message()))
    }
}

impl Serialize for AlgorithmConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", self.name())?;
        erased_serde::serialize(self.0.as_serialize(), FieldsInto { map })
    }
}

/// Writes a config struct's fields as entries of an already open map (after `name`).
struct FieldsInto<M> {
    map: M,
}

fn not_a_struct<E: ser::Error>() -> E {
    E::custom("an algorithm's config must serialize as a struct of keys")
}

macro_rules! refuse {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> std::result::Result<Self::Ok, Self::Error> {
            Err(not_a_struct())
        })*
    };
}

impl<M: SerializeMap> Serializer for FieldsInto<M> {
    type Ok = M::Ok;
    type Error = M::Error;
    type SerializeSeq = Impossible<M::Ok, M::Error>;
    type SerializeTuple = Impossible<M::Ok, M::Error>;
    type SerializeTupleStruct = Impossible<M::Ok, M::Error>;
    type SerializeTupleVariant = Impossible<M::Ok, M::Error>;
    type SerializeMap = Impossible<M::Ok, M::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<M::Ok, M::Error>;

    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + Serialize>(
        self,
        _: &T,
    ) -> std::result::Result<Self::Ok, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> std::result::Result<Self::Ok, Self::Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<Self::Ok, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_seq(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeSeq, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self::SerializeTuple, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_map(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeMap, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStruct, Self::Error> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, Self::Error> {
        Err(not_a_struct())
    }
}

impl<M: SerializeMap> SerializeStruct for FieldsInto<M> {
    type Ok = M::Ok;
    type Error = M::Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), M::Error> {
        self.map.serialize_entry(key, value)
    }
    fn end(self) -> std::result::Result<M::Ok, M::Error> {
        self.map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::registry::{builtins, register, Synchronous};
    use crate::algorithms::{Algorithm, EasgdConfig, SgpConfig};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct File {
        algorithm: AlgorithmConfig,
    }

    fn parse(table: &str) -> std::result::Result<AlgorithmConfig, String> {
        toml::from_str::<File>(&format!("[algorithm]\n{table}"))
            .map(|f| f.algorithm)
            .map_err(|e| e.message().to_string())
    }

    /// `peloton list` shows exactly what each config accepts: every listed key is accepted
    /// (a table holding just that key, with the value the default config writes or a value of
    /// the key's type, parses or fails only on validation, never as an unknown field), and a
    /// key that is not listed is refused as unknown.
    #[test]
    fn every_listed_key_is_accepted_and_every_other_refused() {
        for entry in AlgorithmConfig::catalog() {
            let keys = entry.keys();
            for key in &keys {
                let err = parse(&format!("name = \"{}\"\n{key} = 1", entry.name))
                    .err()
                    .unwrap_or_default();
                assert!(
                    !err.contains("unknown field"),
                    "{}: listed key {key} refused: {err}",
                    entry.name
                );
            }
            let err = parse(&format!("name = \"{}\"\nnot_a_key = 1", entry.name)).unwrap_err();
            assert!(
                err.contains("unknown field `not_a_key`"),
                "{}: an unknown key must be refused: {err}",
                entry.name
            );
            // Every key the config writes is listed.
            let written: toml::Table = toml::from_str(
                &toml::to_string(&File {
                    algorithm: parse(&format!("name = \"{}\"", entry.name)).unwrap(),
                })
                .unwrap(),
            )
            .unwrap();
            for key in written["algorithm"].as_table().unwrap().keys() {
                assert!(
                    key == "name" || keys.contains(&key.as_str()),
                    "{}: writes key {key} that the list does not show",
                    entry.name
                );
            }
        }
    }

    #[test]
    fn the_catalog_lists_the_keys_of_each_config() {
        let keys = |name: &str| registry::lookup(name).unwrap().keys();
        assert_eq!(
            keys("lsgd"),
            [
                "tau",
                "lambda",
                "prox",
                "group_size",
                "tau_global",
                "lambda_global",
                "prox_global"
            ]
        );
        assert_eq!(
            keys("async-lsgd"),
            keys("lsgd"),
            "async-lsgd takes lsgd's keys"
        );
        assert_eq!(keys("easgd"), ["tau", "alpha", "beta"]);
        assert_eq!(keys("eamsgd"), keys("easgd"));
        assert!(keys("ad-psgd").is_empty(), "ad-psgd has no keys");
        assert!(keys("all-reduce").is_empty());
        assert_eq!(builtins().len(), 17);
    }

    #[test]
    fn timing_and_center_come_from_the_registration() {
        let asynchronous: Vec<&str> = builtins()
            .iter()
            .filter(|e| e.asynchronous)
            .map(|e| e.name)
            .collect();
        assert_eq!(
            asynchronous,
            ["async-lsgd", "async-easgd", "async-eamsgd", "ad-psgd"]
        );
        let centered: Vec<&str> = builtins()
            .iter()
            .filter(|e| e.has_center)
            .map(|e| e.name)
            .collect();
        assert_eq!(centered, ["easgd", "eamsgd", "async-easgd", "async-eamsgd"]);
        for entry in builtins() {
            let config = parse(&format!("name = \"{}\"", entry.name)).unwrap();
            assert_eq!(config.is_async(), entry.asynchronous);
            assert_eq!(config.has_center(), entry.has_center);
        }
    }

    #[test]
    fn unknown_names_and_bad_tables_are_one_line_errors() {
        let err = parse("name = \"lsgdd\"").unwrap_err();
        assert!(
            err.starts_with("unknown variant `lsgdd`, expected one of `independent`, `all-reduce`"),
            "{err}"
        );
        assert!(parse("tau = 3")
            .unwrap_err()
            .contains("missing field `name`"));
        assert!(parse("name = 3")
            .unwrap_err()
            .contains("expected the algorithm's name as a string"));
        let err = parse("name = \"lsgd\"\nlamda = 0.1").unwrap_err();
        assert!(
            err.contains("unknown field `lamda`, expected one of `tau`"),
            "{err}"
        );
        for err in [
            parse("name = \"lsgdd\"").unwrap_err(),
            parse("name = \"lsgd\"\nlamda = 0.1").unwrap_err(),
        ] {
            assert!(!err.trim_end().contains('\n'), "not one line: {err:?}");
        }
    }

    #[test]
    fn typed_access_and_equality() {
        let mut config = parse("name = \"easgd\"\ntau = 8").unwrap();
        assert_eq!(config.get::<EasgdConfig>().unwrap().tau, Some(8));
        assert!(config.get::<SgpConfig>().is_none());
        config.get_mut::<EasgdConfig>().unwrap().tau = Some(2);
        assert_eq!(
            config,
            AlgorithmConfig::new(EasgdConfig {
                tau: Some(2),
                ..Default::default()
            })
        );
        assert_ne!(config, AlgorithmConfig::default());
        assert_eq!(config.clone(), config);
        // eamsgd has easgd's keys but is another algorithm.
        assert_ne!(
            parse("name = \"eamsgd\"").unwrap(),
            parse("name = \"easgd\"").unwrap()
        );
    }

    /// A user crate's algorithm registers like a built-in one and is then parsed, listed and
    /// built; a second registration under a taken name is refused.
    #[test]
    fn a_registered_algorithm_is_parsed_listed_and_built() {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct HalfwayConfig {
            #[serde(default)]
            weight: f32,
        }
        struct Halfway;
        impl Algorithm for Halfway {}
        impl AlgorithmSpec for HalfwayConfig {
            const NAME: &'static str = "test-halfway";
            const SUMMARY: &'static str = "a test entry";
            type Timing = Synchronous;
            fn validate(&self, _: &RunShape<'_>) -> Result<()> {
                crate::ensure_config!(self.weight <= 1.0, "algorithm.weight must be at most 1");
                Ok(())
            }
            fn build(&self, _: &RunShape<'_>, _: usize) -> Result<Box<dyn Algorithm>> {
                Ok(Box::new(Halfway))
            }
        }
        register(Registration::of::<HalfwayConfig>()).unwrap();
        let err = register(Registration::of::<HalfwayConfig>()).unwrap_err();
        assert!(err.to_string().contains("already registered"), "{err}");
        let err = register(Registration::of::<LsgdConfig>()).unwrap_err();
        assert!(
            err.to_string().contains("\"lsgd\" is already registered"),
            "{err}"
        );

        let config = parse("name = \"test-halfway\"\nweight = 0.5").unwrap();
        assert_eq!(config.name(), "test-halfway");
        assert_eq!(registry::lookup("test-halfway").unwrap().keys(), ["weight"]);
        assert!(!config.is_async());
        let optimizer = OptimizerConfig::default();
        config.validate(4, 0, &optimizer).unwrap();
        let run = RunShape {
            workers: 4,
            seed: 0,
            optimizer: &optimizer,
        };
        assert!(matches!(
            config.build(&run, 3).unwrap(),
            Worker::Synchronous(_)
        ));
        let err = parse("name = \"test-halfway\"\nweight = 2")
            .unwrap()
            .validate(4, 0, &optimizer);
        assert!(err.unwrap_err().to_string().contains("algorithm.weight"));
        let text = toml::to_string(&File {
            algorithm: config.clone(),
        })
        .unwrap();
        assert_eq!(text, "[algorithm]\nname = \"test-halfway\"\nweight = 0.5\n");
    }
}
