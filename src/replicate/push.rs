//! `aurum push`: a pull run the other way. To a directory it opens the repository there and
//! pulls from this one as a local source (the same code, the same checks); over ssh see
//! [`push_ssh`].
