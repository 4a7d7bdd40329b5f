//! `GET /v1/mesh/topology`: who calls whom, and the golden metrics of services and calls, read
//! from the sidecars' own metrics.
//!
//! How the numbers reach the control plane: every sidecar acknowledges each configuration it
//! applies (`PUT /v1/internal/proxy/{id}/ack?revision=N&admin=ADDR`) and, with it, the address of
//! its admin listener. While someone reads this endpoint (and for a minute after), the replica
//! answering scrapes `/metrics` of every sidecar in the catalog every [`SCRAPE_EVERY`], keeps the
//! last readings in memory, and computes each window from the newest reading and one about
//! [`WINDOW`] older. Nothing is written to the store (a write per sidecar per scrape would wake
//! every blocking query), so any replica can answer and none needs the others.
//!
//! ```text
//! sidecar /metrics ──scrape──► prom::parse ─► golden::sidecar_traffic ─► Reading
//! readings (newest, ~10 s older) ─► golden::golden per service (inbound) and per edge (outbound)
//! catalog: services, proxies' declared upstreams ─► nodes and declared edges
//! ```
//!
//! The endpoint is a blocking query on the reading's sequence number (`?index=N&wait=`), so a
//! page follows the numbers without polling: one request per scrape.

pub mod golden;
pub mod prom;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use plexus_api::operator::ProxyAck;
use plexus_api::{CatalogError, ServiceKind};
use serde::Serialize;
use tokio::sync::watch;

use self::golden::{Golden, SidecarTraffic, Traffic};
use crate::catalog::StoreCatalog;
use crate::operator::PROXIES_PREFIX;
use crate::store::Store;

/// How often sidecars are scraped while someone reads.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// The window golden metrics cover (roughly: the reading closest to this old is used).
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long scraping continues after the last read.
pub const IDLE_AFTER: Duration = Duration::from_secs(60);
/// How long one sidecar may take to answer a scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Sidecars scraped at once.
const SCRAPE_CONCURRENCY: usize = 32;

/// The mesh as the topology endpoint answers it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshView {
    /// Sequence number of the reading (the blocking-query index).
    pub index: u64,
    /// When the reading was taken (Unix milliseconds).
    pub scraped_at: u64,
    /// Seconds between the two readings the rates come from (0: one reading so far).
    pub window_seconds: f64,
    /// Every service that is not a sidecar, with its inbound golden metrics.
    pub services: BTreeMap<String, ServiceNode>,
    /// Calls: declared upstreams and observed traffic, with golden metrics.
    pub edges: Vec<Edge>,
    /// Each sidecar and whether its metrics could be read.
    pub sidecars: Vec<SidecarStatus>,
}

/// A service in the topology.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceNode {
    /// Sidecars in front of its instances.
    pub sidecars: usize,
    /// Traffic its sidecars let in.
    pub golden: Golden,
}

/// A call from one service to another.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Edge {
    /// The calling service.
    pub source: String,
    /// The called service.
    pub destination: String,
    /// A sidecar of `source` lists `destination` as an upstream.
    pub declared: bool,
    /// Traffic the source's sidecars sent to `destination`.
    pub golden: Golden,
}

/// A sidecar and its last scrape.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SidecarStatus {
    /// The sidecar's service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service it fronts.
    pub service: String,
    /// Its admin address, as it reported it (empty: not reported yet).
    pub admin: String,
    /// Why its metrics could not be read, if they could not.
    pub error: Option<String>,
}

/// One scrape of every sidecar.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    /// Sidecar id → (service, traffic).
    sidecars: HashMap<String, (String, SidecarTraffic)>,
}

/// What the catalog says about the mesh's shape.
#[derive(Debug, Default)]
struct Shape {
    services: BTreeSet<String>,
    /// Sidecar id → (fronted service, declared upstreams).
    proxies: BTreeMap<String, (String, Vec<String>)>,
}

/// The scraper and the latest view; cheap to clone.
#[derive(Clone)]
pub struct MeshMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MeshMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshMetrics").finish_non_exhaustive()
    }
}

struct Inner {
    catalog: Arc<StoreCatalog>,
    store: Arc<dyn Store>,
    http: reqwest::Client,
    view: watch::Sender<Arc<MeshView>>,
    last_read: Mutex<Instant>,
    running: AtomicBool,
}

impl MeshMetrics {
    /// A scraper over `catalog` and the proxies' acknowledgements in `store`; it runs only while
    /// the topology is being read.
    pub fn new(catalog: Arc<StoreCatalog>, store: Arc<dyn Store>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                catalog,
                store,
                http,
                view: watch::channel(Arc::new(MeshView::default())).0,
                last_read: Mutex::new(Instant::now()),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// The latest view as a watch, after making sure the scraper runs and has read once.
    pub async fn watch(&self) -> watch::Receiver<Arc<MeshView>> {
        *self
            .inner
            .last_read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        if !self.inner.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(Arc::downgrade(&self.inner)));
        }
        let mut view = self.inner.view.subscribe();
        let _ = tokio::time::timeout(
            SCRAPE_EVERY + SCRAPE_TIMEOUT * 2,
            view.wait_for(|v| v.index > 0),
        )
        .await;
        view
    }
}

/// Scrapes every [`SCRAPE_EVERY`] until nobody has read for [`IDLE_AFTER`] or the metrics are
/// dropped.
async fn run(inner: Weak<Inner>) {
    let mut readings: VecDeque<Reading> = VecDeque::new();
    let mut index = 0u64;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let idle = strong
            .last_read
            .lock()
            .map_or(Duration::ZERO, |t| t.elapsed())
            > IDLE_AFTER;
        if idle {
            strong.running.store(false, Ordering::SeqCst);
            return;
        }
        match collect(&strong).await {
            Ok((shape, reading, statuses)) => {
                readings.push_back(reading);
                while readings.len() > 2
                    && readings[1].at.elapsed() >= WINDOW.saturating_sub(SCRAPE_EVERY / 2)
                {
                    readings.pop_front();
                }
                index += 1;
                let view = compute(index, &shape, &readings, statuses);
                strong.view.send_replace(Arc::new(view));
            }
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "mesh metrics: catalog read failed");
            }
        }
        drop(strong);
        tokio::time::sleep(SCRAPE_EVERY).await;
    }
}

async fn collect(inner: &Inner) -> Result<(Shape, Reading, Vec<SidecarStatus>), CatalogError> {
    let shape = shape(&inner.catalog).await?;
    let admins: HashMap<String, String> = match inner.store.range(PROXIES_PREFIX).await {
        Ok((kvs, _)) => kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<ProxyAck>(&kv.value).ok())
            .map(|ack| (ack.id, ack.admin_addr))
            .collect(),
        Err(error) => {
            tracing::debug!(error = %crate::api::ErrorChain(&error), "mesh metrics: acks unreadable");
            HashMap::new()
        }
    };
    let targets: Vec<(String, String, String)> = shape
        .proxies
        .iter()
        .map(|(id, (service, _))| {
            let admin = admins.get(id).cloned().unwrap_or_default();
            (id.clone(), service.clone(), admin)
        })
        .collect();
    let scrapes = targets.into_iter().map(|(id, service, admin)| {
        let http = inner.http.clone();
        async move {
            let scraped = if admin.is_empty() {
                Err("no admin address reported yet".to_owned())
            } else {
                scrape(&http, &admin).await
            };
            (id, service, admin, scraped)
        }
    });
    let results: Vec<_> = futures::stream::iter(scrapes)
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect()
        .await;
    let mut reading = Reading {
        at: Instant::now(),
        sidecars: HashMap::new(),
    };
    let mut statuses = Vec::new();
    for (id, service, admin, scraped) in results {
        let error = match scraped {
            Ok(traffic) => {
                reading
                    .sidecars
                    .insert(id.clone(), (service.clone(), traffic));
                None
            }
            Err(error) => Some(error),
        };
        statuses.push(SidecarStatus {
            id,
            service,
            admin,
            error,
        });
    }
    Ok((shape, reading, statuses))
}

async fn scrape(http: &reqwest::Client, admin: &str) -> Result<SidecarTraffic, String> {
    let response = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .map_err(|e| format!("cannot reach {admin}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{admin} answered {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read {admin}'s metrics: {e}"))?;
    Ok(golden::sidecar_traffic(&prom::parse(&text)))
}

/// Services and sidecars (with their declared upstreams) from the catalog.
async fn shape(catalog: &StoreCatalog) -> Result<Shape, CatalogError> {
    let names = catalog.service_names().await?.value;
    let mut shape = Shape::default();
    for name in names.keys() {
        for instance in catalog.service_nodes(name, None).await?.value {
            match (&instance.service_kind, &instance.service_proxy) {
                (ServiceKind::ConnectProxy, Some(proxy)) => {
                    let upstreams = proxy
                        .upstreams
                        .iter()
                        .filter(|u| {
                            u.destination_type.is_empty() || u.destination_type == "service"
                        })
                        .map(|u| u.destination_name.clone())
                        .collect();
                    shape.proxies.insert(
                        instance.service_id.clone(),
                        (proxy.destination_service_name.clone(), upstreams),
                    );
                }
                _ => {
                    shape.services.insert(name.clone());
                }
            }
        }
    }
    Ok(shape)
}

/// The view from the readings (oldest first; the newest is last).
fn compute(
    index: u64,
    shape: &Shape,
    readings: &VecDeque<Reading>,
    sidecars: Vec<SidecarStatus>,
) -> MeshView {
    let (Some(newest), Some(oldest)) = (readings.back(), readings.front()) else {
        return MeshView::default();
    };
    let seconds = newest.at.duration_since(oldest.at).as_secs_f64();
    // Per sidecar: (total, window), where a sidecar not in the older reading adds no window.
    let window_of = |id: &str, pick: &dyn Fn(&SidecarTraffic) -> Option<Traffic>| {
        let total = newest
            .sidecars
            .get(id)
            .and_then(|(_, t)| pick(t))
            .unwrap_or_default();
        let window = match oldest.sidecars.get(id).and_then(|(_, t)| pick(t)) {
            Some(then) if seconds > 0.0 => total.since(&then),
            _ => Traffic::default(),
        };
        (total, window)
    };

    let mut services: BTreeMap<String, (usize, Traffic, Traffic)> = shape
        .services
        .iter()
        .map(|s| (s.clone(), (0, Traffic::default(), Traffic::default())))
        .collect();
    let mut edges: BTreeMap<(String, String), (bool, Traffic, Traffic)> = BTreeMap::new();
    for (id, (service, upstreams)) in &shape.proxies {
        let entry = services.entry(service.clone()).or_default();
        entry.0 += 1;
        let (total, window) = window_of(id, &|t| Some(t.inbound.clone()));
        entry.1.add(&total);
        entry.2.add(&window);
        for upstream in upstreams {
            edges
                .entry((service.clone(), upstream.clone()))
                .or_default()
                .0 = true;
        }
        let observed: Vec<String> = newest
            .sidecars
            .get(id)
            .map(|(_, t)| t.outbound.keys().cloned().collect())
            .unwrap_or_default();
        for upstream in observed {
            let (total, window) = window_of(id, &|t| t.outbound.get(&upstream).cloned());
            if total.requests + total.connections <= 0.0 {
                continue;
            }
            let edge = edges
                .entry((service.clone(), upstream.clone()))
                .or_default();
            edge.1.add(&total);
            edge.2.add(&window);
        }
    }
    MeshView {
        index,
        scraped_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        window_seconds: seconds,
        services: services
            .into_iter()
            .map(|(name, (sidecars, total, window))| {
                let node = ServiceNode {
                    sidecars,
                    golden: golden::golden(&window, seconds, &total),
                };
                (name, node)
            })
            .collect(),
        edges: edges
            .into_iter()
            .map(|((source, destination), (declared, total, window))| Edge {
                source,
                destination,
                declared,
                golden: golden::golden(&window, seconds, &total),
            })
            .collect(),
        sidecars,
    }
}
