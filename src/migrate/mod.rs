//! Migration from SystemImager: its disk layouts as templates ([`layout`]), its image
//! directories, overrides and exclude files as revisions ([`image`]).

pub mod image;
pub mod layout;
