//! The one error type every module uses for failures nobody expects (a lost
//! connection, a broken invariant): logged with its cause chain, shown to
//! clients only as a bare 500.

/// Any unexpected failure, with its cause.
#[derive(Debug, thiserror::Error)]
pub struct Unexpected(pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl std::fmt::Display for Unexpected {
    /// The whole cause chain ("db error: ERROR: deadlock detected"), since
    /// the top of a chain alone often says nothing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

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

impl Unexpected {
    /// True when the database pool had no connection to give within its wait
    /// limit: overload, answered 429 rather than 500.
    pub fn is_overload(&self) -> bool {
        matches!(
            self.0.downcast_ref::<deadpool_postgres::PoolError>(),
            Some(deadpool_postgres::PoolError::Timeout(_))
        )
    }
}

impl Unexpected {
    /// True for a transaction Postgres aborted to break a deadlock or a
    /// serialisation conflict: running it again may succeed.
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        self.0
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| {
                *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
            })
    }
}

impl Unexpected {
    /// True when Postgres or Redis could not be reached or went away
    /// mid-request (a restart, a crash, a lost connection): nothing was
    /// decided, so the client is told to retry rather than handed a 500.
    pub fn is_unavailable(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self.0.as_ref());
        while let Some(error) = cause {
            if let Some(pool) = error.downcast_ref::<deadpool_postgres::PoolError>() {
                // Backend: a new connection could not be made; Closed: the
                // pool itself is shutting down.
                if matches!(
                    pool,
                    deadpool_postgres::PoolError::Backend(_) | deadpool_postgres::PoolError::Closed
                ) {
                    return true;
                }
            }
            if let Some(postgres) = error.downcast_ref::<tokio_postgres::Error>() {
                if postgres_unavailable(postgres) {
                    return true;
                }
            }
            if let Some(redis) = error.downcast_ref::<fred::error::Error>() {
                use fred::error::ErrorKind;
                if matches!(
                    redis.kind(),
                    ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout
                ) {
                    return true;
                }
            }
            // A socket failure under either client (request paths read no
            // files).
            if error.is::<std::io::Error>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

/// A closed connection, or Postgres shutting down, crashing, starting up
/// (SQLSTATE class 57P) or failing the connection (class 08).
fn postgres_unavailable(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    error.code().is_some_and(|code| {
        let code = code.code();
        code.starts_with("57P") || code.starts_with("08")
    })
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
