//! The one error type every module uses for failures nobody expects (a lost
//! connection, a broken invariant): logged with its cause chain, shown to
//! clients only as a bare 500.

/// Any unexpected failure, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unexpected(pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl Unexpected {
    /// Wraps any error.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Unexpected {
        Unexpected(Box::new(error))
    }

    /// Wraps a message.
    pub fn msg(message: impl Into<String>) -> Unexpected {
        Unexpected(message.into().into())
    }
}

impl From<tokio_postgres::Error> for Unexpected {
    fn from(error: tokio_postgres::Error) -> Unexpected {
        Unexpected::from_error(error)
    }
}

impl From<deadpool_postgres::PoolError> for Unexpected {
    fn from(error: deadpool_postgres::PoolError) -> Unexpected {
        Unexpected::from_error(error)
    }
}
