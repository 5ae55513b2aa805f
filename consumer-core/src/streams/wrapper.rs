//! [`StreamsWrapper`]: a streams API that wraps another and changes a few of its calls.
//!
//! Tests and benchmarks wrap the API to count, hold or reorder calls. Each wrapper used to
//! forward every method by hand, so a method added to [`StreamsApi`] meant editing every
//! wrapper, and a forgotten one fell back to the trait's default without a word (a wrapper
//! of the simulated stream that did not forward `random_u64` drew from the OS instead of
//! the seed). As for the lease store's `StoreWrapper`, the list of methods is written once,
//! in the `forwarding!` invocation at the end of this file: it makes both the wrapper
//! trait's forwarding defaults and the blanket `impl<W: StreamsWrapper> StreamsApi for W`.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::api::{ApiError, RecordsPage, ShardInfo, StartPosition, StreamPage, StreamsApi};

/// Writes the [`StreamsWrapper`] trait (each call forwarding to the wrapped API by default,
/// through [`StreamsWrapper::around_call`]) and the blanket [`StreamsApi`] impl that calls
/// the wrapper's methods, from one list of the API's method signatures.
macro_rules! forwarding {
    (
        calls { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }
        values { $(fn $value:ident(&self) -> $value_ty:ty;)* }
    ) => {
        /// A [`StreamsApi`] that wraps another ([`wrapped`](Self::wrapped)): every method
        /// forwards to it unless the wrapper overrides it, and every `StreamsWrapper` is a
        /// `StreamsApi` (a blanket impl). A wrapper writes only what it changes: one call
        /// (override its method), or every call ([`around_call`](Self::around_call)):
        ///
        /// ```
        /// # use std::sync::atomic::{AtomicU64, Ordering};
        /// # use dynamodb_streams_consumer::streams::{ApiError, RecordsPage, SdkStreams, StreamsApi};
        /// /// Counts GetRecords calls.
        /// #[derive(Debug)]
        /// struct Counting {
        ///     inner: SdkStreams,
        ///     get_records: AtomicU64,
        /// }
        ///
        /// #[async_trait::async_trait]
        /// impl dynamodb_streams_consumer::streams::StreamsWrapper for Counting {
        ///     type Inner = SdkStreams;
        ///     fn wrapped(&self) -> &SdkStreams {
        ///         &self.inner
        ///     }
        ///     async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError> {
        ///         self.get_records.fetch_add(1, Ordering::Relaxed);
        ///         self.inner.get_records(iterator, limit).await
        ///     }
        /// }
        /// ```
        ///
        /// Implement it with its path (`impl dynamodb_streams_consumer::streams::StreamsWrapper
        /// for …`) rather than importing it where the wrapper's methods are called: with both
        /// traits in scope, a call such as `api.get_records(…)` on the concrete type names two
        /// methods and does not compile. Calls through `dyn StreamsApi` never are.
        #[async_trait]
        pub trait StreamsWrapper: Send + Sync + fmt::Debug + 'static {
            /// The API this one wraps (a `dyn StreamsApi` or a concrete one).
            type Inner: StreamsApi + ?Sized;

            /// The wrapped API: where every method not overridden goes.
            fn wrapped(&self) -> &Self::Inner;

            /// Every forwarded call goes through here: `call` is the wrapped API's answer,
            /// not yet awaited. By default it is awaited as is; a wrapper that changes every
            /// call alike (holds it, delays it) overrides this alone. A method the wrapper
            /// overrides does not pass here unless it calls this itself.
            async fn around_call<T: Send>(&self, call: BoxFuture<'_, T>) -> T {
                call.await
            }

            $(
                #[doc = concat!(
                    "[`StreamsApi::", stringify!($name), "`]: the wrapped API's (through ",
                    "`around_call`) unless overridden."
                )]
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.around_call(self.wrapped().$name($($arg),*)).await
                }
            )*

            $(
                #[doc = concat!(
                    "[`StreamsApi::", stringify!($value), "`]: the wrapped API's unless overridden."
                )]
                fn $value(&self) -> $value_ty {
                    self.wrapped().$value()
                }
            )*
        }

        #[async_trait]
        impl<W: StreamsWrapper> StreamsApi for W {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    StreamsWrapper::$name(self $(, $arg)*).await
                }
            )*

            $(
                fn $value(&self) -> $value_ty {
                    StreamsWrapper::$value(self)
                }
            )*
        }
    };
}

// One line per `StreamsApi` method, in the trait's order: a method added to the trait is
// added here, and every wrapper forwards it.
forwarding! {
    calls {
        fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError>;
        fn describe_stream(&self, stream_arn: &str, exclusive_start_shard_id: Option<&str>) -> Result<StreamPage, ApiError>;
        fn child_shards(&self, stream_arn: &str, parent_shard_id: &str) -> Result<Vec<ShardInfo>, ApiError>;
        fn shard_iterator(&self, stream_arn: &str, shard_id: &str, position: &StartPosition) -> Result<String, ApiError>;
        fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError>;
    }
    values {
        fn now(&self) -> SystemTime;
        fn random_u64(&self) -> u64;
    }
}
