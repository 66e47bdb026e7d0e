//! `[compression]`: which compressor, its parameters, error feedback, and which messages.
//!
//! ```toml
//! [compression]
//! kind = "int8"            # none | fp16 | bf16 | int8 | topk | randomk | powersgd
//! block = 256              # int8: values per block (default 256)
//! fraction = 0.01          # topk, randomk: the share of values sent (default 0.01)
//! rank = 2                 # powersgd: the rank of each matrix's approximation (default 2)
//! error_feedback = true    # keep each stream's residual and send it later (default: true
//!                          # for topk, randomk and powersgd, false otherwise)
//! apply_to = ["gradients"] # gradients | models | gossip (default: all three)
//! ```

use crate::DecodeError;
use serde::{Deserialize, Serialize};

/// The messages a compressor may apply to, by what they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Gradient reductions (all-reduce SGD, layered SGD).
    Gradients,
    /// Model broadcasts and reductions: pulls toward a leader or a center, model averaging.
    Models,
    /// Gossip between neighbours (D-PSGD, SGP, MATCHA, AL-DSGD, AD-PSGD).
    Gossip,
}

/// The kind names a config accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KindName {
    #[default]
    None,
    Fp16,
    Bf16,
    Int8,
    Topk,
    Randomk,
    Powersgd,
}

/// The `[compression]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Absent: the default of where the table is (`none` for `[compression]`; an algorithm
    /// that always compresses, such as CHOCO-SGD, picks its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<KindName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_feedback: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_to: Option<Vec<Role>>,
}

/// A compressor with its parameters resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    None,
    Fp16,
    Bf16,
    Int8 {
        block: usize,
    },
    TopK {
        fraction: f64,
    },
    RandomK {
        fraction: f64,
    },
    /// Low-rank all-reduce (Vogels et al. 2019): not a byte compressor, the communication
    /// layer runs it (two all-reduces of the factors).
    PowerSgd {
        rank: usize,
    },
}

const DEFAULT_BLOCK: usize = 256;
const DEFAULT_FRACTION: f64 = 0.01;
/// Larger blocks than this save nothing more (8 bytes per block) and only widen the steps.
const MAX_BLOCK: usize = 1 << 20;
const DEFAULT_RANK: usize = 2;
/// Past a few dozen the factors cost about what the matrices do.
const MAX_RANK: usize = 64;

impl Kind {
    /// The kind as two numbers — a code and its parameter (int8's block, the sparsifiers'
    /// fraction as f64 bits, PowerSGD's rank) — for a transport that carries a compressed
    /// message to a decoder in another process (MPI's parameter server). [`Kind::from_wire`]
    /// reads it back.
    pub fn to_wire(&self) -> (u32, u64) {
        match *self {
            Kind::None => (0, 0),
            Kind::Fp16 => (1, 0),
            Kind::Bf16 => (2, 0),
            Kind::Int8 { block } => (3, block as u64),
            Kind::TopK { fraction } => (4, fraction.to_bits()),
            Kind::RandomK { fraction } => (5, fraction.to_bits()),
            Kind::PowerSgd { rank } => (6, rank as u64),
        }
    }

    /// The kind [`Kind::to_wire`] wrote, checked as a config's values are: a message from
    /// another process is not trusted to build a compressor with a zero block or a fraction
    /// of 2.
    pub fn from_wire(code: u32, param: u64) -> Result<Kind, DecodeError> {
        let bad = || DecodeError(format!("compressor code {code} with parameter {param:#x}"));
        let fraction = || {
            let f = f64::from_bits(param);
            (f > 0.0 && f <= 1.0).then_some(f).ok_or_else(bad)
        };
        let count = |max: usize| {
            usize::try_from(param)
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(bad)
        };
        Ok(match code {
            0 => Kind::None,
            1 => Kind::Fp16,
            2 => Kind::Bf16,
            3 => Kind::Int8 {
                block: count(MAX_BLOCK)?,
            },
            4 => Kind::TopK {
                fraction: fraction()?,
            },
            5 => Kind::RandomK {
                fraction: fraction()?,
            },
            6 => Kind::PowerSgd {
                rank: count(MAX_RANK)?,
            },
            _ => return Err(bad()),
        })
    }
}

impl CompressionConfig {
    /// Checks every key; each error names it, in one line.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind();
        let only = |key: &str, set: bool, kinds: &[KindName], names: &str| {
            if set && !kinds.contains(&kind) {
                Err(format!(
                    "compression.{key} applies to kind = {names} only (kind is \"{}\")",
                    kind.as_str()
                ))
            } else {
                Ok(())
            }
        };
        only("block", self.block.is_some(), &[KindName::Int8], "\"int8\"")?;
        only(
            "fraction",
            self.fraction.is_some(),
            &[KindName::Topk, KindName::Randomk],
            "\"topk\" or \"randomk\"",
        )?;
        only(
            "rank",
            self.rank.is_some(),
            &[KindName::Powersgd],
            "\"powersgd\"",
        )?;
        only(
            "error_feedback",
            self.error_feedback.is_some(),
            &[
                KindName::Fp16,
                KindName::Bf16,
                KindName::Int8,
                KindName::Topk,
                KindName::Randomk,
                KindName::Powersgd,
            ],
            "a compressor, not \"none\"",
        )?;
        if let Some(block) = self.block {
            if !(1..=MAX_BLOCK).contains(&block) {
                return Err(format!(
                    "compression.block must be between 1 and {MAX_BLOCK}, got {block}"
                ));
            }
        }
        if let Some(rank) = self.rank {
            if !(1..=MAX_RANK).contains(&rank) {
                return Err(format!(
                    "compression.rank must be between 1 and {MAX_RANK}, got {rank}"
                ));
            }
        }
        if let Some(f) = self.fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(format!("compression.fraction must be in (0, 1], got {f}"));
            }
        }
        if let Some(roles) = &self.apply_to {
            if roles.is_empty() {
                return Err(
                    "compression.apply_to is empty: name gradients, models or gossip, or set kind = \"none\""
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The compressor with its parameters (defaults filled in).
    pub fn resolved(&self) -> Kind {
        match self.kind() {
            KindName::None => Kind::None,
            KindName::Fp16 => Kind::Fp16,
            KindName::Bf16 => Kind::Bf16,
            KindName::Int8 => Kind::Int8 {
                block: self.block.unwrap_or(DEFAULT_BLOCK),
            },
            KindName::Topk => Kind::TopK {
                fraction: self.fraction.unwrap_or(DEFAULT_FRACTION),
            },
            KindName::Randomk => Kind::RandomK {
                fraction: self.fraction.unwrap_or(DEFAULT_FRACTION),
            },
            KindName::Powersgd => Kind::PowerSgd {
                rank: self.rank.unwrap_or(DEFAULT_RANK),
            },
        }
    }

    /// The compressor's kind: the one given, else `none`.
    pub fn kind(&self) -> KindName {
        self.kind.unwrap_or_default()
    }

    /// This config with `kind` filled in where the table leaves it out.
    pub fn or_kind(&self, kind: KindName) -> CompressionConfig {
        CompressionConfig {
            kind: Some(self.kind.unwrap_or(kind)),
            ..self.clone()
        }
    }

    /// True for an empty table (nothing given).
    pub fn is_empty(&self) -> bool {
        *self == CompressionConfig::default()
    }

    /// Whether each stream keeps its residual: on by default for the sparsifiers and
    /// PowerSGD, which otherwise drop most of every message for good.
    pub fn error_feedback(&self) -> bool {
        self.error_feedback.unwrap_or(matches!(
            self.kind(),
            KindName::Topk | KindName::Randomk | KindName::Powersgd
        ))
    }

    /// Whether messages of `role` are compressed.
    pub fn applies_to(&self, role: Role) -> bool {
        self.kind() != KindName::None
            && self
                .apply_to
                .as_ref()
                .is_none_or(|roles| roles.contains(&role))
    }
}

impl KindName {
    /// Every kind with one line on what it does, for `peloton list`.
    pub fn catalog() -> [(KindName, &'static str); 7] {
        [
            (KindName::None, "every message as fp32 (the default)"),
            (KindName::Fp16, "IEEE half precision (the CPU's F16C): ÷2"),
            (KindName::Bf16, "bfloat16, fp32's range: ÷2"),
            (
                KindName::Int8,
                "blockwise min–max 8-bit (block, default 256): about ÷4",
            ),
            (
                KindName::Topk,
                "the largest `fraction` of magnitudes, index and value (default 1%)",
            ),
            (
                KindName::Randomk,
                "`fraction` of the values at positions drawn from the seed",
            ),
            (
                KindName::Powersgd,
                "gradient all-reduces as rank-`rank` factors of each matrix (default 2)",
            ),
        ]
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            KindName::None => "none",
            KindName::Fp16 => "fp16",
            KindName::Bf16 => "bf16",
            KindName::Int8 => "int8",
            KindName::Topk => "topk",
            KindName::Randomk => "randomk",
            KindName::Powersgd => "powersgd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CompressionConfig, String> {
        let c: CompressionConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn the_catalog_names_every_kind_as_a_config_writes_it() {
        for (kind, what) in KindName::catalog() {
            let c = parse(&format!("kind = \"{}\"", kind.as_str())).unwrap();
            assert_eq!(c.kind(), kind);
            assert!(!what.is_empty());
        }
    }

    #[test]
    fn defaults_and_resolution() {
        let c = parse("").unwrap();
        assert_eq!(c.resolved(), Kind::None);
        assert!(!c.applies_to(Role::Gradients));
        assert!(c.is_empty());
        // Where the kind is left out, the place's default applies: keys still check against it.
        let c = parse("fraction = 0.05").unwrap_err();
        assert!(
            c.contains("applies to kind = \"topk\" or \"randomk\" only"),
            "{c}"
        );
        let c: CompressionConfig = toml::from_str("fraction = 0.05").unwrap();
        assert_eq!(
            c.or_kind(KindName::Topk).resolved(),
            Kind::TopK { fraction: 0.05 }
        );
        assert_eq!(c.or_kind(KindName::Topk).validate(), Ok(()));
        let c = parse("kind = \"int8\"").unwrap();
        assert_eq!(c.resolved(), Kind::Int8 { block: 256 });
        assert!(!c.error_feedback());
        let c = parse("kind = \"topk\"\nfraction = 0.05\napply_to = [\"gossip\"]").unwrap();
        assert_eq!(c.resolved(), Kind::TopK { fraction: 0.05 });
        assert!(c.error_feedback(), "on by default for sparsifiers");
        assert!(c.applies_to(Role::Gossip) && !c.applies_to(Role::Models));
        let c = parse("kind = \"randomk\"\nerror_feedback = false").unwrap();
        assert!(!c.error_feedback());
    }

    #[test]
    fn every_bad_key_is_a_one_line_error_naming_it() {
        for (text, needle) in [
            ("kind = \"zip\"", "unknown variant `zip`"),
            ("kind = \"int8\"\nblok = 3", "unknown field `blok`"),
            (
                "kind = \"int8\"\nblock = 0",
                "compression.block must be between 1 and 1048576, got 0",
            ),
            (
                "kind = \"topk\"\nfraction = 0",
                "compression.fraction must be in (0, 1], got 0",
            ),
            (
                "kind = \"topk\"\nfraction = nan",
                "compression.fraction must be in (0, 1], got NaN",
            ),
            (
                "kind = \"fp16\"\nblock = 8",
                "compression.block applies to kind = \"int8\" only (kind is \"fp16\")",
            ),
            (
                "kind = \"int8\"\nfraction = 0.1",
                "compression.fraction applies to kind = \"topk\" or \"randomk\" only",
            ),
            (
                "error_feedback = true",
                "compression.error_feedback applies to kind = a compressor",
            ),
            (
                "kind = \"fp16\"\napply_to = []",
                "compression.apply_to is empty",
            ),
            (
                "kind = \"fp16\"\napply_to = [\"weights\"]",
                "unknown variant `weights`",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.trim_end().contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_kind_survives_its_wire_form_and_a_bad_one_is_refused() {
        for kind in [
            Kind::None,
            Kind::Fp16,
            Kind::Bf16,
            Kind::Int8 { block: 256 },
            Kind::TopK { fraction: 0.01 },
            Kind::RandomK { fraction: 1.0 },
            Kind::PowerSgd { rank: 2 },
        ] {
            let (code, param) = kind.to_wire();
            assert_eq!(Kind::from_wire(code, param), Ok(kind));
        }
        for (code, param) in [
            (3, 0),
            (3, (MAX_BLOCK + 1) as u64),
            (4, 2.0f64.to_bits()),
            (5, 0.0f64.to_bits()),
            (4, f64::NAN.to_bits()),
            (6, 0),
            (7, 0),
        ] {
            let err = Kind::from_wire(code, param).unwrap_err().to_string();
            assert!(err.contains(&format!("compressor code {code}")), "{err}");
        }
    }
}
