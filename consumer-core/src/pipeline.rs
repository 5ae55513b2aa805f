//! Named pipelines: several consumers of one application over a single read of each shard
//! (issue 19). The builder side is here; the engine is `shard::pipelines`.

use std::future::{Ready, ready};
use std::sync::Arc;

use serde::de::IgnoredAny;

use crate::change::ChangeBatch;
use crate::consumer::{Consumer, ConsumerBuilder, PendingPipeline};
use crate::error::{BoxError, Error, Result};
use crate::processor::{FnProcessor, ProcessorFactory, ShardContext, processor_fn};
use crate::shard::pipelines::Pipeline;

/// The longest pipeline name: it is a lease-item attribute (`pl|NAME`), a metrics label
/// and a `jsonl-worker` flag prefix.
const MAX_NAME_LEN: usize = 64;

/// The factory of a consumer made of named pipelines
/// ([`ConsumerBuilder::build_pipelines`]): every shard is delivered to the pipelines'
/// processors; this one makes none that the consumer uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pipelines;

type NoProcess = fn(ChangeBatch<IgnoredAny>) -> Ready<Result<(), BoxError>>;

fn no_process(_: ChangeBatch<IgnoredAny>) -> Ready<Result<(), BoxError>> {
    ready(Err(
        "a consumer of named pipelines delivers only to its pipelines' processors".into(),
    ))
}

impl Pipelines {
    /// Where a lease's shared read stands, given its pipelines' checkpoints: the one
    /// furthest behind, `None` when there are none. Snapshot segment positions (`SCAN:`)
    /// are ordered by the items scanned, shard positions as
    /// [`pipeline::slowest`](dynamodb_streams_leases::pipeline::slowest) orders them. The
    /// rule the consumer writes each lease's `checkpoint` by, for tools that rank pipelines.
    pub fn read_position<'a>(
        checkpoints: impl IntoIterator<Item = &'a dynamodb_streams_leases::Checkpoint>,
    ) -> Option<dynamodb_streams_leases::Checkpoint> {
        crate::shard::pipelines::read_position(checkpoints)
    }
}

impl ProcessorFactory for Pipelines {
    type Processor = FnProcessor<IgnoredAny, NoProcess>;

    fn create(&self, shard: &ShardContext) -> Self::Processor {
        processor_fn(no_process as NoProcess).create(shard)
    }
}

impl ConsumerBuilder {
    /// Adds a named pipeline: its own processors (made by `factory`), its own checkpoint
    /// per shard (an attribute of the shard's lease item) and its own failures, over the
    /// same read of each shard as the other pipelines. The name must stay the same across
    /// deployments (it keys the checkpoints): 1 to 64 of `A-Z a-z 0-9 _ - .`. The
    /// consumer's settings apply to every pipeline, unless
    /// [`with_pipeline_settings`](Self::with_pipeline_settings) changes some. Build with
    /// [`build_pipelines`](Self::build_pipelines).
    pub fn with_pipeline<P: ProcessorFactory>(
        mut self,
        name: impl Into<String>,
        factory: P,
    ) -> Self {
        self.pipelines.push(PendingPipeline {
            name: name.into(),
            make: Box::new(move |name, config| Arc::new(Pipeline::new(name, factory, config))),
            settings: None,
        });
        self
    }

    /// Settings of the pipeline `name` where they differ from the consumer's: `settings`
    /// gets a builder holding the consumer's settings and returns it changed, e.g.
    /// `|b| b.with_max_retries(3).with_on_failure(handler)`. The pipeline's own are its
    /// delivery settings (failure policy and handler, batch shaping, key parallelism,
    /// filter, batch and shutdown timeouts), checkpoint interval and initial position;
    /// the shard's read and the leases follow the consumer's. Given after the pipeline's
    /// `with_pipeline`; a second call for the same pipeline replaces the first.
    pub fn with_pipeline_settings(
        mut self,
        name: &str,
        settings: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder + Send + Sync + 'static,
    ) -> Self {
        match self.pipelines.iter_mut().find(|p| p.name == name) {
            Some(pipeline) => pipeline.settings = Some(Box::new(settings)),
            None => self.unknown_pipeline_settings.push(name.to_owned()),
        }
        self
    }

    /// Checks the settings and makes a consumer of the named pipelines given with
    /// [`with_pipeline`](Self::with_pipeline) (at least one).
    pub fn build_pipelines(mut self) -> Result<Consumer<Pipelines>> {
        let pending = std::mem::take(&mut self.pipelines);
        check_names(&pending)?;
        if let Some(name) = self.unknown_pipeline_settings.first() {
            return Err(Error::Config {
                key: "with_pipeline_settings",
                problem: format!("pipeline {name:?} is not given by a `with_pipeline` before it"),
            });
        }
        let mut consumer = self.build(Pipelines)?;
        let mut pipelines = Vec::with_capacity(pending.len());
        for PendingPipeline {
            name,
            make,
            settings,
        } in pending
        {
            let config = match settings {
                None => consumer.config().clone(),
                Some(settings) => ConsumerBuilder::pipeline_config(consumer.config(), settings)
                    .map_err(|error| match error {
                        Error::Config { key, problem } => Error::Config {
                            key,
                            problem: format!("pipeline {name:?}: {problem}"),
                        },
                        other => other,
                    })?,
            };
            pipelines.push(make(name, config));
        }
        consumer.pipelines = pipelines;
        Ok(consumer)
    }
}

/// Names are there, well-formed and distinct; the error names the one that is not.
fn check_names(pending: &[PendingPipeline]) -> Result<()> {
    let problem = |problem: String| {
        Err(Error::Config {
            key: "with_pipeline",
            problem,
        })
    };
    if pending.is_empty() {
        return problem("build_pipelines needs at least one `with_pipeline`".into());
    }
    for (i, pipeline) in pending.iter().enumerate() {
        let name = &pipeline.name;
        let well_formed = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !well_formed {
            return problem(format!(
                "pipeline name {name:?}: must be 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - ."
            ));
        }
        if pending[..i].iter().any(|p| p.name == *name) {
            return problem(format!("pipeline name {name:?} is given twice"));
        }
    }
    Ok(())
}
