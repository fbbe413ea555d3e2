//! Receiving Alive messages: by pull ([`pull`], a consumer on the dueslag queue) and by
//! push ([`push`], the endpoint the Beskedfordeler POSTs to). Both hand each body to the
//! dueslag's probe for classification and settle it by the verdict.

pub mod pull;
pub mod push;
