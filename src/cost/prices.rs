//! On-demand prices of SageMaker real-time inference instances with NVIDIA GPUs, and their GPUs.
//!
//! Region: us-east-1 (US East, N. Virginia). Currency: USD per instance-hour, on demand, before
//! Savings Plans, EBS storage and data transfer. Prices as of 2026-07-30 to 2026-09-20 (the
//! dates of the readings below). Other regions differ: set `[cost] instance_hourly_price_usd`.
//!
//! Where the numbers come from (public sources disagree; the previous engineer saw ml.g5.xlarge
//! as both $1.21 and $1.41: $1.21 is an EC2-style figure in a blog post, $1.408 is the SageMaker
//! price list's), best first:
//! - [`Basis::HostingPriceList`]: the AWS Price List API offer file for AmazonSageMaker,
//!   <https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonSageMaker/current/us-east-1/index.json>,
//!   usage type `USE1-Host:<type>` (real-time inference), as quoted by public code that read it
//!   on 2026-07-30 (ml.g5.xlarge, ml.g6.xlarge, ml.g6.12xlarge) and 2026-09-20 (ml.g6e.2xlarge,
//!   offer `publicationDate` 2026-09-20T02:56:06Z). ml.g6.12xlarge at $5.752 is also the
//!   metrics spec's worked example.
//! - [`Basis::OtherComponentPriceList`]: the same Price List API's Training or Batch Transform
//!   price for the type (read 2026-08). For these families every Hosting price above equals its
//!   Training/Batch Transform price to the last digit (ml.g6e.2xlarge $2.8026 in both), and one
//!   source states the Training and Hosting usage types are priced the same in us-east-1; not
//!   read from `USE1-Host` itself.
//! - [`Basis::Unverified`]: ml.p4d.24xlarge and ml.p5.48xlarge. Public sources give $37.688 and
//!   $113.068 (before AWS's June 2025 P4/P5 price reduction) and $25.251286 and $63.296 (a
//!   Training table; each is the EC2 on-demand price after the reduction, $21.957642 and
//!   $55.04 in us-east-1 on 2026-11-09, times 1.15, SageMaker's usual markup). The table uses the
//!   later figures; the agent logs that the price is unverified and the docs say to set
//!   `[cost] instance_hourly_price_usd` from the bill.
//!
//! Not in the table (no price found in a source of the kinds above): ml.g6e.16xlarge and every
//! other type. They need `[cost] instance_hourly_price_usd` (and `gpus_per_instance`).
//!
//! GPUs per instance: g5, g6 and g6e have 1 GPU up to 16xlarge, 4 at 12xlarge and 24xlarge, 8
//! at 48xlarge; p4d.24xlarge (A100) and p5.48xlarge (H100) have 8.

/// How well a price is known.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Read from the price list's real-time inference (`Host`) usage type.
    HostingPriceList,
    /// The price list's Training/Batch Transform price for the type, equal to Hosting wherever
    /// both were read.
    OtherComponentPriceList,
    /// Sources disagree; see the module documentation.
    Unverified,
}

impl Basis {
    pub fn describe(self) -> &'static str {
        match self {
            Basis::HostingPriceList => "AWS price list, real-time inference, us-east-1",
            Basis::OtherComponentPriceList => {
                "AWS price list, training/batch transform (same as hosting), us-east-1"
            }
            Basis::Unverified => {
                "unverified (public sources disagree): set [cost] instance_hourly_price_usd"
            }
        }
    }
}

/// One instance type's on-demand price.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct PriceRow {
    pub instance_type: &'static str,
    pub hourly_usd: f64,
    pub gpus: u32,
    pub basis: Basis,
}

/// The date and region of [`PRICES`], for messages and the `cost` report.
pub const PRICES_AS_OF: &str = "us-east-1 on-demand prices as of 2026-09-20";

const fn row(instance_type: &'static str, hourly_usd: f64, gpus: u32, basis: Basis) -> PriceRow {
    PriceRow {
        instance_type,
        hourly_usd,
        gpus,
        basis,
    }
}

use Basis::{HostingPriceList as Host, OtherComponentPriceList as Other, Unverified};

/// See the module documentation for sources, region and date.
pub const PRICES: &[PriceRow] = &[
    // G5: NVIDIA A10G, 24 GB.
    row("ml.g5.xlarge", 1.408, 1, Host),
    row("ml.g5.2xlarge", 1.515, 1, Other),
    row("ml.g5.4xlarge", 2.03, 1, Other),
    row("ml.g5.8xlarge", 3.06, 1, Other),
    row("ml.g5.16xlarge", 5.12, 1, Other),
    row("ml.g5.12xlarge", 7.09, 4, Other),
    row("ml.g5.24xlarge", 10.18, 4, Other),
    row("ml.g5.48xlarge", 20.36, 8, Other),
    // G6: NVIDIA L4, 24 GB.
    row("ml.g6.xlarge", 1.1267, 1, Host),
    row("ml.g6.2xlarge", 1.222, 1, Other),
    row("ml.g6.4xlarge", 1.654, 1, Other),
    row("ml.g6.8xlarge", 2.518, 1, Other),
    row("ml.g6.16xlarge", 4.246, 1, Other),
    row("ml.g6.12xlarge", 5.752, 4, Host),
    row("ml.g6.24xlarge", 8.344, 4, Other),
    row("ml.g6.48xlarge", 16.688, 8, Other),
    // G6e: NVIDIA L40S, 48 GB.
    row("ml.g6e.xlarge", 2.6054, 1, Other),
    row("ml.g6e.2xlarge", 2.8026, 1, Host),
    row("ml.g6e.4xlarge", 3.7553, 1, Other),
    row("ml.g6e.8xlarge", 5.6607, 1, Other),
    row("ml.g6e.12xlarge", 13.1158, 4, Other),
    row("ml.g6e.24xlarge", 18.8319875, 4, Other),
    row("ml.g6e.48xlarge", 37.663975, 8, Other),
    // P4d: 8 NVIDIA A100 40 GB; P5: 8 NVIDIA H100 80 GB.
    row("ml.p4d.24xlarge", 25.251286, 8, Unverified),
    row("ml.p5.48xlarge", 63.296, 8, Unverified),
];

/// The table's row for an instance type (exact name, e.g. "ml.g6.12xlarge").
pub fn lookup(instance_type: &str) -> Option<&'static PriceRow> {
    PRICES.iter().find(|r| r.instance_type == instance_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_is_in_the_table() {
        let r = lookup("ml.g6.12xlarge").unwrap();
        assert_eq!(
            (r.hourly_usd, r.gpus, r.basis),
            (5.752, 4, Basis::HostingPriceList)
        );
        assert!(lookup("ml.g6.12XLARGE").is_none());
        assert!(lookup("ml.m5.xlarge").is_none());
    }

    #[test]
    fn every_required_family_is_present_and_sane() {
        for required in [
            "ml.g5.",
            "ml.g6.",
            "ml.g6e.",
            "ml.p4d.24xlarge",
            "ml.p5.48xlarge",
        ] {
            assert!(
                PRICES.iter().any(|r| r.instance_type.starts_with(required)),
                "{required}"
            );
        }
        for r in PRICES {
            assert!(r.hourly_usd.is_finite() && r.hourly_usd > 0.0, "{r:?}");
            assert!(matches!(r.gpus, 1 | 4 | 8), "{r:?}");
            assert_eq!(
                PRICES
                    .iter()
                    .filter(|o| o.instance_type == r.instance_type)
                    .count(),
                1,
                "{r:?} listed once"
            );
        }
    }
}
