//! The chain source against a real local chain: Foundry's anvil (the binary that the npm
//! package @foundry-rs/anvil ships, pinned in tests/node) running the published builds of
//! Uniswap V2 (`@uniswap/v2-core`) and V3 (`@uniswap/v3-core`), with tokens and a V3 callback
//! contract of the tests' own compiled by the pinned solc-js. Trades, liquidity and time
//! (`evm_increaseTime`) are driven from here over JSON-RPC with anvil's unlocked accounts;
//! dexpulse follows the chain as a user runs it and its events are read back from its API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{sol, SolCall};
use serde_json::{json, Value};

use crate::support::{requires, Component};

sol! {
    interface Token {
        function mint(address to, uint256 value) external;
        function transfer(address to, uint256 value) external returns (bool);
        function approve(address spender, uint256 value) external returns (bool);
        function balanceOf(address owner) external view returns (uint256);
    }
    interface V2Factory {
        function createPair(address tokenA, address tokenB) external returns (address pair);
        function getPair(address tokenA, address tokenB) external view returns (address pair);
    }
    interface V2Pair {
        function token0() external view returns (address);
        function getReserves() external view returns (uint112 reserve0, uint112 reserve1, uint32 blockTimestampLast);
        function mint(address to) external returns (uint256 liquidity);
        function burn(address to) external returns (uint256 amount0, uint256 amount1);
        function swap(uint256 amount0Out, uint256 amount1Out, address to, bytes data) external;
        function balanceOf(address owner) external view returns (uint256);
    }
    interface V3Factory {
        function createPool(address tokenA, address tokenB, uint24 fee) external returns (address pool);
        function getPool(address tokenA, address tokenB, uint24 fee) external view returns (address pool);
    }
    interface V3Pool {
        function initialize(uint160 sqrtPriceX96) external;
        function token0() external view returns (address);
    }
    interface Callee {
        function mint(address pool, address recipient, int24 tickLower, int24 tickUpper, uint128 amount) external;
        function swapExactIn(address pool, bool zeroForOne, uint256 amountIn, address recipient) external;
    }
}

const NODE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

/// Whether the chain tests can run here: anvil, the Uniswap builds and solc come from
/// `tests/node` (npm ci), node runs the compiler.
pub fn chain_here(test: &str) -> bool {
    requires(test, &[Component::NodeModules])
}

fn anvil_binary() -> PathBuf {
    let dir = Path::new(NODE).join("node_modules/@foundry-rs");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path().join("bin/anvil"))
        .find(|p| p.is_file())
        .expect("no anvil binary under tests/node/node_modules/@foundry-rs (npm ci --prefix tests/node)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A local chain: anvil on a free port, killed when dropped.
pub struct Anvil {
    child: Option<Child>,
    pub port: u16,
    pub state: PathBuf,
}

impl Anvil {
    pub fn start(name: &str) -> Anvil {
        let state = crate::cli::tmp(&format!("anvil-{name}.json"));
        let _ = std::fs::remove_file(&state);
        Anvil::start_on(state, free_port())
    }

    /// On `port`, loading and (at a graceful stop) saving the chain in `state`.
    pub fn start_on(state: PathBuf, port: u16) -> Anvil {
        let log = std::fs::File::create(state.with_extension("log")).unwrap();
        let child = Command::new(anvil_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--accounts",
                "3",
                "--balance",
                "1000000",
                "--code-size-limit",
                "60000",
            ])
            .arg("--state")
            .arg(&state)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("anvil runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "anvil did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Anvil {
            child: Some(child),
            port,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM: anvil saves its chain to the state file and exits.
    pub fn stop(mut self) -> (PathBuf, u16) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        (self.state.clone(), self.port)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// JSON-RPC to anvil, with its first unlocked account as the sender of everything.
#[derive(Clone)]
pub struct Rpc {
    url: String,
    http: reqwest::Client,
    pub me: Address,
}

impl Rpc {
    pub async fn new(url: String) -> Rpc {
        let http = reqwest::Client::new();
        let mut r = Rpc {
            url,
            http,
            me: Address::ZERO,
        };
        let accounts = r.call("eth_accounts", json!([])).await;
        r.me = accounts[0].as_str().unwrap().parse().unwrap();
        r
    }

    pub async fn call(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":params});
        let bytes = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        if let Some(e) = v.get("error") {
            panic!("{method}: {e}");
        }
        v["result"].clone()
    }

    /// A transaction from `me`, mined at once (anvil's automine); panics if it reverts.
    pub async fn send(&self, to: Option<Address>, data: Vec<u8>) -> Value {
        let mut tx = json!({"from": self.me, "data": Bytes::from(data), "gas": "0x1c9c380"});
        if let Some(to) = to {
            tx["to"] = json!(to);
        }
        let hash = self.call("eth_sendTransaction", json!([tx])).await;
        // Mined at once, but the receipt may take a moment to be served.
        let mut receipt = Value::Null;
        for _ in 0..500 {
            receipt = self.call("eth_getTransactionReceipt", json!([hash])).await;
            if !receipt.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(receipt["status"], "0x1", "reverted: {receipt}");
        receipt
    }

    pub async fn view(&self, to: Address, data: Vec<u8>) -> Vec<u8> {
        let r = self
            .call(
                "eth_call",
                json!([{"to": to, "data": Bytes::from(data)}, "latest"]),
            )
            .await;
        serde_json::from_value::<Bytes>(r).unwrap().to_vec()
    }

    pub async fn deploy(&self, code: Vec<u8>) -> Address {
        let receipt = self.send(None, code).await;
        receipt["contractAddress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Moves the chain's clock: the next block is `secs` later.
    pub async fn warp(&self, secs: u64) {
        self.call("evm_increaseTime", json!([secs])).await;
    }

    pub async fn mine(&self) {
        self.call("evm_mine", json!([])).await;
    }

    pub async fn head(&self) -> u64 {
        let v = self.call("eth_blockNumber", json!([])).await;
        u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    pub async fn block_time_ms(&self, n: u64) -> i64 {
        let b = self
            .call("eth_getBlockByNumber", json!([format!("{n:#x}"), false]))
            .await;
        i64::from_str_radix(
            b["timestamp"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap()
            * 1000
    }
}

fn hex_code(s: &str) -> Vec<u8> {
    let s = s.trim_start_matches("0x");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The creation code of a contract, by file.
fn creation_code(path: &Path) -> Vec<u8> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let code = v["bytecode"]
        .as_str()
        .or_else(|| v["evm"]["bytecode"]["object"].as_str())
        .unwrap();
    hex_code(code)
}

/// The tests' own contracts, compiled once per test binary by tests/node/compile.mjs.
fn own_contracts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chain-contracts");
        let run = Command::new("node")
            .arg(Path::new(NODE).join("compile.mjs"))
            .arg(&out)
            .output()
            .expect("node runs");
        assert!(
            run.status.success(),
            "compile.mjs: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

fn with_args(mut code: Vec<u8>, args: &[u8]) -> Vec<u8> {
    code.extend_from_slice(args);
    code
}

fn addr_word(a: Address) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(a.as_slice());
    w
}

/// `10^d` as a U256.
pub fn pow10(d: u32) -> U256 {
    U256::from(10u64).pow(U256::from(d))
}

/// Uniswap V2 and V3 deployed, USDC at $1, and helpers to trade as a user would.
pub struct Dex {
    pub rpc: Rpc,
    pub v2_factory: Address,
    pub v3_factory: Address,
    pub usdc: Address,
    pub callee: Address,
}

impl Dex {
    pub async fn deploy(rpc: Rpc) -> Dex {
        let v2 = Path::new(NODE).join("node_modules/@uniswap/v2-core/build/UniswapV2Factory.json");
        let v3 = Path::new(NODE).join(
            "node_modules/@uniswap/v3-core/artifacts/contracts/UniswapV3Factory.sol/UniswapV3Factory.json",
        );
        // UniswapV2Factory(feeToSetter)
        let v2_factory = rpc
            .deploy(with_args(creation_code(&v2), &addr_word(rpc.me)))
            .await;
        let v3_factory = rpc.deploy(creation_code(&v3)).await;
        let callee = rpc
            .deploy(creation_code(&own_contracts().join("V3Callee.json")))
            .await;
        let mut dex = Dex {
            rpc,
            v2_factory,
            v3_factory,
            usdc: Address::ZERO,
            callee,
        };
        dex.usdc = dex.token("USD Coin", "USDC", 6).await;
        dex
    }

    /// A token of the tests' own, with a supply minted to the trader.
    pub async fn token(&self, name: &str, symbol: &str, decimals: u8) -> Address {
        use alloy_sol_types::SolValue;
        // `uint8` is one word, as a `uint256` of the same value.
        let args = (name.to_string(), symbol.to_string(), U256::from(decimals)).abi_encode_params();
        let code = with_args(
            creation_code(&own_contracts().join("TestToken.json")),
            &args,
        );
        let t = self.rpc.deploy(code).await;
        let supply = U256::from(1_000_000_000_000u64) * pow10(u32::from(decimals));
        self.rpc
            .send(
                Some(t),
                Token::mintCall {
                    to: self.rpc.me,
                    value: supply,
                }
                .abi_encode(),
            )
            .await;
        for spender in [self.callee] {
            self.rpc
                .send(
                    Some(t),
                    Token::approveCall {
                        spender,
                        value: U256::MAX,
                    }
                    .abi_encode(),
                )
                .await;
        }
        t
    }

    pub async fn transfer(&self, token: Address, to: Address, value: U256) {
        self.rpc
            .send(Some(token), Token::transferCall { to, value }.abi_encode())
            .await;
    }

    /// A V2 pair made by the factory with `base` and `quote` deposited.
    pub async fn v2_pair(&self, token: Address, base: U256, quote: U256) -> Address {
        self.rpc
            .send(
                Some(self.v2_factory),
                V2Factory::createPairCall {
                    tokenA: token,
                    tokenB: self.usdc,
                }
                .abi_encode(),
            )
            .await;
        let pair = Address::from_slice(
            &self
                .rpc
                .view(
                    self.v2_factory,
                    V2Factory::getPairCall {
                        tokenA: token,
                        tokenB: self.usdc,
                    }
                    .abi_encode(),
                )
                .await[12..32],
        );
        self.transfer(token, pair, base).await;
        self.transfer(self.usdc, pair, quote).await;
        self.rpc
            .send(
                Some(pair),
                V2Pair::mintCall { to: self.rpc.me }.abi_encode(),
            )
            .await;
        pair
    }

    async fn v2_reserves(&self, pair: Address, token: Address) -> (U256, U256, bool) {
        let t0 = Address::from_slice(
            &self
                .rpc
                .view(pair, V2Pair::token0Call {}.abi_encode())
                .await[12..32],
        );
        let r = self
            .rpc
            .view(pair, V2Pair::getReservesCall {}.abi_encode())
            .await;
        let r = V2Pair::getReservesCall::abi_decode_returns(&r).unwrap();
        let (r0, r1) = (U256::from(r.reserve0), U256::from(r.reserve1));
        let base_is_0 = t0 == token;
        if base_is_0 {
            (r0, r1, true)
        } else {
            (r1, r0, false)
        }
    }

    /// Swaps `amount_in` of one side for the other on a V2 pair: `buy` pays USDC for the token.
    pub async fn v2_swap(&self, pair: Address, token: Address, buy: bool, amount_in: U256) {
        let (rb, rq, base_is_0) = self.v2_reserves(pair, token).await;
        let (r_in, r_out) = if buy { (rq, rb) } else { (rb, rq) };
        let out = amount_in * U256::from(997) * r_out
            / (r_in * U256::from(1000) + amount_in * U256::from(997));
        let pay = if buy { self.usdc } else { token };
        self.transfer(pay, pair, amount_in).await;
        // The side paid out: the token when buying.
        let out_is_0 = (buy && base_is_0) || (!buy && !base_is_0);
        let (a0, a1) = if out_is_0 {
            (out, U256::ZERO)
        } else {
            (U256::ZERO, out)
        };
        self.rpc
            .send(
                Some(pair),
                V2Pair::swapCall {
                    amount0Out: a0,
                    amount1Out: a1,
                    to: self.rpc.me,
                    data: Bytes::new(),
                }
                .abi_encode(),
            )
            .await;
    }

    /// The LP sends `share` of its LP tokens to the pair and burns them.
    pub async fn v2_remove(&self, pair: Address, share: f64) {
        let held = self
            .rpc
            .view(
                pair,
                V2Pair::balanceOfCall { owner: self.rpc.me }.abi_encode(),
            )
            .await;
        let held = U256::from_be_slice(&held);
        let lp = held * U256::from((share * 1_000_000.0) as u64) / U256::from(1_000_000u64);
        self.transfer(pair, pair, lp).await;
        self.rpc
            .send(
                Some(pair),
                V2Pair::burnCall { to: self.rpc.me }.abi_encode(),
            )
            .await;
    }

    /// A V3 pool (fee 0.3 %) of `token` against USDC at $1, full range, `liquidity` deep.
    pub async fn v3_pool(&self, token: Address, liquidity: u128) -> Address {
        self.rpc
            .send(
                Some(self.v3_factory),
                V3Factory::createPoolCall {
                    tokenA: token,
                    tokenB: self.usdc,
                    fee: alloy_primitives::aliases::U24::from(3000u32),
                }
                .abi_encode(),
            )
            .await;
        let pool = Address::from_slice(
            &self
                .rpc
                .view(
                    self.v3_factory,
                    V3Factory::getPoolCall {
                        tokenA: token,
                        tokenB: self.usdc,
                        fee: alloy_primitives::aliases::U24::from(3000u32),
                    }
                    .abi_encode(),
                )
                .await[12..32],
        );
        // One token (18 decimals) for one USDC (6): 1e6 raw USDC per 1e18 raw token.
        let token_is_0 = token < self.usdc;
        let ratio: f64 = if token_is_0 { 1e-12 } else { 1e12 };
        let sqrt = ratio.sqrt() * 2f64.powi(96);
        let sqrt_x96 = U256::from(sqrt as u128);
        self.rpc
            .send(
                Some(pool),
                V3Pool::initializeCall {
                    sqrtPriceX96: alloy_primitives::aliases::U160::from(sqrt_x96),
                }
                .abi_encode(),
            )
            .await;
        self.rpc
            .send(
                Some(self.callee),
                Callee::mintCall {
                    pool,
                    recipient: self.rpc.me,
                    tickLower: alloy_primitives::aliases::I24::try_from(-887_220i32).unwrap(),
                    tickUpper: alloy_primitives::aliases::I24::try_from(887_220i32).unwrap(),
                    amount: liquidity,
                }
                .abi_encode(),
            )
            .await;
        pool
    }

    /// Sells `amount_in` of `token` on a V3 pool.
    pub async fn v3_sell(&self, pool: Address, token: Address, amount_in: U256) {
        self.v3_swap(pool, token, false, amount_in).await;
    }

    /// Swaps `amount_in` on a V3 pool: `buy` pays USDC for the token. Returns the receipt.
    pub async fn v3_swap(
        &self,
        pool: Address,
        token: Address,
        buy: bool,
        amount_in: U256,
    ) -> Value {
        let pay = if buy { self.usdc } else { token };
        let other = if buy { token } else { self.usdc };
        self.rpc
            .send(
                Some(self.callee),
                Callee::swapExactInCall {
                    pool,
                    zeroForOne: pay < other,
                    amountIn: amount_in,
                    recipient: self.rpc.me,
                }
                .abi_encode(),
            )
            .await
    }
}

/// dexpulse following `anvil` from block 0: every pool the factories make, USDC at $1.
pub fn chain_config(anvil: &Anvil, dex: &Dex) -> dexpulse::app::settings::RawConfig {
    use dexpulse::app::settings::SourceKind;
    let mut c = crate::server::test_config();
    c.source.kind = SourceKind::Evm;
    let e = &mut c.source.evm;
    e.rpc_url = anvil.url();
    e.chain = "anvil".into();
    e.factories = vec![
        dexpulse::evm::RawFactory {
            address: format!("{:#x}", dex.v2_factory),
            kind: "v2".into(),
            dex: None,
        },
        dexpulse::evm::RawFactory {
            address: format!("{:#x}", dex.v3_factory),
            kind: "v3".into(),
            dex: None,
        },
    ];
    e.quote_tokens = vec![dexpulse::evm::RawQuote {
        address: format!("{:#x}", dex.usdc),
        usd: Some(1.0),
        usd_pool: None,
    }];
    e.confirmations = 0;
    e.start_block = Some(0);
    e.poll_seconds = 0.05;
    e.requests_per_second = 10_000.0;
    e.backoff_base_seconds = 0.05;
    e.backoff_max_seconds = 0.5;
    e.circuit_open_seconds = 0.5;
    c
}

/// Waits until the server has applied block `n` (its `dexpulse_evm_block`).
pub async fn until_block(r: &dexpulse::app::Running, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let at = crate::server::metric(r, "dexpulse_evm_block");
        if at >= n as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chain source reached block {at}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event the server retains, as JSON (oldest first).
pub async fn events(r: &dexpulse::app::Running) -> Vec<Value> {
    let (status, body) = crate::server::http_get(r, "/v1/signals?since=0&limit=1000", &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event"].clone())
        .collect()
}

/// An event's time, in ms.
pub fn at_ms(e: &Value) -> i64 {
    dexpulse::model::parse_rfc3339_ms(e["observed_at"].as_str().unwrap()).unwrap()
}

fn e18(x: u64) -> U256 {
    U256::from(x) * pow10(18)
}

fn e6(x: u64) -> U256 {
    U256::from(x) * pow10(6)
}

/// A seeded stream of numbers for the trades.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The market of the issue, on one chain: a quiet V2 pool traded both ways for 90 minutes,
/// then a breakout (buys lifting its price 30 % in 10 minutes on rising volume); a second V2
/// pair whose LP takes 90 % of the liquidity out (a rug); a V3 pool sold down 50 % with no
/// liquidity removed. dexpulse follows the chain as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_source_sees_breakouts_and_rugs_at_their_block_and_not_a_price_drop() {
    if !chain_here("the_chain_source_sees_breakouts_and_rugs_at_their_block_and_not_a_price_drop") {
        return;
    }
    let anvil = Anvil::start("market");
    let rpc = Rpc::new(anvil.url()).await;
    let dex = Dex::deploy(rpc.clone()).await;
    let tape = crate::cli::tmp("chain-market.jsonl");
    let mut cfg = chain_config(&anvil, &dex);
    cfg.source.evm.record = Some(tape.clone());
    let r = crate::server::start_sourced(cfg).await;

    let quiet = dex.token("Quiet", "QUIET", 18).await;
    let rugged = dex.token("Rug", "RUG", 18).await;
    let sold = dex.token("Sold", "SOLD", 18).await;
    let quiet_pair = dex.v2_pair(quiet, e18(100_000), e6(100_000)).await;
    let rug_pair = dex.v2_pair(rugged, e18(50_000), e6(50_000)).await;
    let v3 = dex.v3_pool(sold, 100_000_000_000_000_000u128).await;

    // Six and a half hours of small two-sided trades on all three (a market that has been
    // there a while: the engine discounts pairs younger than six hours).
    let mut rng = Lcg(7);
    for _ in 0..390 {
        rpc.warp(60).await;
        for (pair, token) in [(quiet_pair, quiet), (rug_pair, rugged), (v3, sold)] {
            let buy = rng.next() < 0.5;
            let usd = 50 + (rng.next() * 400.0) as u64;
            let amount = if buy { e6(usd) } else { e18(usd) };
            if pair == v3 {
                dex.v3_swap(pair, token, buy, amount).await;
            } else {
                dex.v2_swap(pair, token, buy, amount).await;
            }
        }
    }
    let quiet_end = rpc.head().await;
    until_block(&r, quiet_end).await;
    let bullish_in_quiet: Vec<Value> = events(&r)
        .await
        .into_iter()
        .filter(|e| e["direction"] == "bullish")
        .collect();
    assert!(
        bullish_in_quiet.is_empty(),
        "bullish events on a quiet market: {bullish_in_quiet:?}"
    );

    // The breakout: 20 buys over 10 minutes, each larger than the last.
    let breakout_from = rpc.block_time_ms(quiet_end).await + 30_000;
    for i in 0..20u64 {
        rpc.warp(30).await;
        dex.v2_swap(quiet_pair, quiet, true, e6(300 + 60 * i)).await;
    }
    let breakout_end = rpc.head().await;
    let breakout_to = rpc.block_time_ms(breakout_end).await;
    let reserves = dex.v2_reserves(quiet_pair, quiet).await;
    let price = reserves.1.to::<u128>() as f64 / 1e6 / (reserves.0.to::<u128>() as f64 / 1e18);
    assert!(price > 1.25, "the breakout lifted the price to {price}");

    // The rug: 90 % of the liquidity leaves in one burn.
    rpc.warp(60).await;
    dex.v2_remove(rug_pair, 0.9).await;
    let burn_block = rpc.head().await;
    let burn_ms = rpc.block_time_ms(burn_block).await;

    // The V3 sell-off: the price halves over ten minutes, no liquidity leaves.
    for _ in 0..20 {
        rpc.warp(30).await;
        dex.v3_sell(v3, sold, e18(2_130)).await;
    }
    // Time for the windows to roll past it.
    for _ in 0..5 {
        rpc.warp(60).await;
        rpc.mine().await;
    }
    until_block(&r, rpc.head().await).await;
    let all = events(&r).await;
    let pair_of = |a: Address| format!("{a:#x}");

    let bullish: Vec<&Value> = all
        .iter()
        .filter(|e| e["direction"] == "bullish" && e["pair_address"] == pair_of(quiet_pair))
        .collect();
    assert!(
        !bullish.is_empty(),
        "no bullish event on the breakout: {all:?}"
    );
    let first = at_ms(bullish[0]);
    assert!(
        (breakout_from..=breakout_to + 120_000).contains(&first),
        "the first bullish event at {first}, the breakout {breakout_from}..{breakout_to}: {:?}",
        bullish[0]
    );
    assert_eq!(bullish[0]["source"], "evm");
    assert_eq!(bullish[0]["base_token"]["symbol"], "QUIET");
    assert_eq!(bullish[0]["quote_token"]["symbol"], "USDC");

    let rugs: Vec<&Value> = all.iter().filter(|e| e["kind"] == "rug_warning").collect();
    assert_eq!(rugs.len(), 1, "one rug warning: {rugs:?}");
    let rug = rugs[0];
    assert_eq!(rug["pair_address"], pair_of(rug_pair));
    assert_eq!(rug["severity"], "critical");
    assert_eq!(at_ms(rug), burn_ms, "at the burn's block");
    assert!(
        rug["risk_flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "lp_burn"),
        "measured lp_burn: {rug}"
    );
    assert!(!rug.to_string().contains("liq_usd_proxy"), "{rug}");
    assert!(
        rug["metrics"]["lp_removed"].as_f64().unwrap() >= 0.89,
        "{rug}"
    );

    let on_v3: Vec<&Value> = all
        .iter()
        .filter(|e| e["pair_address"] == pair_of(v3))
        .collect();
    assert!(
        on_v3
            .iter()
            .all(|e| e["kind"] != "rug_warning" && e["kind"] != "liquidity_drain"),
        "a price drop is not a rug: {on_v3:?}"
    );
    // It was seen for what it is.
    assert!(
        on_v3.iter().any(|e| e["direction"] == "bearish"),
        "the sell-off gave no bearish event: {on_v3:?}"
    );

    // The recorded replies replay to the same events, byte for byte, and evaluate reads them.
    let published = published_bytes(&r).await;
    r.shutdown().await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dexpulse"))
        .args(["replay", tape.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(replayed.len(), published.len());
    assert_eq!(replayed, published, "the replay differs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dexpulse"))
        .args(["evaluate", tape.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.to_string().contains("rug_warning"), "{report}");
}

/// The events a server published, each as the exact bytes it sent.
async fn published_bytes(r: &dexpulse::app::Running) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        event: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        signals: Vec<Frame<'a>>,
    }
    let (_, body) = crate::server::http_get(r, "/v1/signals?since=0&limit=1000", &[]).await;
    let page: Page = serde_json::from_str(&body).unwrap();
    page.signals
        .iter()
        .map(|f| f.event.get().to_string())
        .collect()
}

/// A pair the factory creates while dexpulse follows the chain is discovered from the
/// factory's log and gets `new_pair`. Then a reorganisation (anvil's snapshot and revert, and
/// other blocks mined at the same heights) replaces a block dexpulse had applied: the pair it
/// touched gets a `reorg` event naming the replaced blocks, and its state is the new chain's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pair_is_discovered_and_a_reorganisation_reaches_the_client() {
    if !chain_here("a_new_pair_is_discovered_and_a_reorganisation_reaches_the_client") {
        return;
    }
    let anvil = Anvil::start("reorg");
    let rpc = Rpc::new(anvil.url()).await;
    let dex = Dex::deploy(rpc.clone()).await;
    let r = crate::server::start_sourced(chain_config(&anvil, &dex)).await;
    until_block(&r, rpc.head().await).await;
    assert!(events(&r).await.is_empty());

    // Made after dexpulse started.
    let fresh = dex.token("Fresh", "FRESH", 18).await;
    let pair = dex.v2_pair(fresh, e18(40_000), e6(40_000)).await;
    let mut rng = Lcg(3);
    for _ in 0..12 {
        rpc.warp(60).await;
        let buy = rng.next() < 0.6;
        let amount = if buy { e6(200) } else { e18(150) };
        dex.v2_swap(pair, fresh, buy, amount).await;
    }
    until_block(&r, rpc.head().await).await;
    let all = events(&r).await;
    let new: Vec<&Value> = all
        .iter()
        .filter(|e| e["kind"] == "new_pair" && e["pair_address"] == format!("{pair:#x}"))
        .collect();
    assert_eq!(new.len(), 1, "{all:?}");
    assert_eq!(new[0]["base_token"]["symbol"], "FRESH");
    assert!(new[0]["metrics"]["age_minutes"].as_i64().unwrap() <= 60);

    // A block dexpulse applies, then replaced.
    let snap = rpc.call("evm_snapshot", json!([])).await;
    let fork = rpc.head().await;
    rpc.warp(60).await;
    dex.v2_swap(pair, fresh, true, e6(5_000)).await;
    let replaced = rpc.head().await;
    until_block(&r, replaced).await;
    assert_eq!(rpc.call("evm_revert", json!([snap])).await, json!(true));
    rpc.warp(90).await;
    dex.v2_swap(pair, fresh, false, e18(100)).await;
    rpc.warp(10).await;
    rpc.mine().await;
    let head = rpc.head().await;
    assert!(head > replaced);
    until_block(&r, head).await;
    let all = events(&r).await;
    let reorgs: Vec<&Value> = all.iter().filter(|e| e["kind"] == "reorg").collect();
    assert_eq!(reorgs.len(), 1, "{all:?}");
    let re = reorgs[0];
    assert_eq!(re["pair_address"], format!("{pair:#x}"));
    assert_eq!(re["direction"], "neutral");
    let reason = re["reasons"][0].as_str().unwrap();
    // A swap is two transactions here (the payment, then the swap): two blocks replaced.
    assert!(
        reason.contains(&format!("{}-{replaced}", fork + 1)),
        "names the replaced blocks {}-{replaced}: {reason}",
        fork + 1
    );
    // The pair's state is the new chain's: the big buy is gone, the sell is there.
    let (rb, rq, _) = dex.v2_reserves(pair, fresh).await;
    let price = rq.to::<u128>() as f64 / 1e6 / (rb.to::<u128>() as f64 / 1e18);
    let (_, body) = crate::server::http_get(&r, &format!("/v1/pairs/anvil/{pair:#x}"), &[]).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let shown: f64 = v["pair"]["price_usd"].as_str().unwrap().parse().unwrap();
    assert!(
        (shown - price).abs() / price < 1e-6,
        "{shown} against {price}"
    );
    assert!(crate::server::metric(&r, "dexpulse_evm_problems_total") >= 1.0);
    r.shutdown().await.unwrap();
}

/// The chain source as a user runs it, on a data directory: anvil stopped (SIGTERM, it saves
/// its chain) and started again mid-stream, then dexpulse itself killed with SIGKILL and
/// started again. While anvil is away dexpulse says it is not ready; each time it catches up
/// from where it was. A client that resumes after each interruption has every event once, in
/// an unbroken run of seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anvil_and_dexpulse_restarted_mid_stream_leave_no_gap_and_no_duplicate() {
    use crate::cli::{http_status as http, signal, spawn_serve_with, tmp};
    use crate::cluster::{open, subscribe, wait_ready};
    if !chain_here("anvil_and_dexpulse_restarted_mid_stream_leave_no_gap_and_no_duplicate") {
        return;
    }
    let _heavy = crate::support::heavy().await;
    let anvil = Anvil::start("restart");
    let rpc = Rpc::new(anvil.url()).await;
    let dex = Dex::deploy(rpc.clone()).await;
    let data = tmp("chain-restart-data");
    let _ = std::fs::remove_dir_all(&data);
    let config = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\ncheckpoint_seconds = 0.2\n\
         [source]\nkind = \"evm\"\n[source.evm]\nrpc_url = \"{}\"\nchain = \"anvil\"\n\
         factories = [{{address = \"{:#x}\", kind = \"v2\"}}]\n\
         quote_tokens = [{{address = \"{:#x}\", usd = 1.0}}]\nconfirmations = 0\nstart_block = 0\n\
         poll_seconds = 0.05\nrequests_per_second = 10000.0\nbackoff_base_seconds = 0.05\n\
         backoff_max_seconds = 0.3\ncircuit_failures = 3\ncircuit_open_seconds = 0.3\n",
        data.display(),
        anvil.url(),
        dex.v2_factory,
        dex.usdc
    );
    let (mut node, addr) = spawn_serve_with("chain-restart.toml", &config, &[], &[]);
    wait_ready_or_data(&addr).await;

    let token = dex.token("Kept", "KEPT", 18).await;
    let rug_token = dex.token("Gone", "GONE", 18).await;
    let pair = dex.v2_pair(token, e18(50_000), e6(50_000)).await;
    let rug_pair = dex.v2_pair(rug_token, e18(30_000), e6(30_000)).await;
    let trade = |n: usize, seed: u64| {
        let dex = &dex;
        async move {
            let mut rng = Lcg(seed);
            for _ in 0..n {
                dex.rpc.warp(60).await;
                for (p, t) in [(pair, token), (rug_pair, rug_token)] {
                    let buy = rng.next() < 0.5;
                    let amount = if buy { e6(300) } else { e18(300) };
                    dex.v2_swap(p, t, buy, amount).await;
                }
            }
        }
    };
    trade(15, 1).await;
    let seen_block = |addr: &str| crate::cluster::metric_of(addr, "dexpulse_evm_block") as u64;
    let wait_block = |addr: String, n: u64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while seen_block(&addr) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck at {}",
                seen_block(&addr)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_block(addr.clone(), rpc.head().await).await;

    // A client from the start.
    let (mut ws, w) = open(&addr).await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    let sub = subscribe(&mut ws, Some((&epoch, 0))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let mut got: Vec<(u64, String)> = Vec::new();

    // anvil goes away: not ready, with the cause; it comes back on its saved chain.
    let (state, port) = anvil.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(&addr, "/readyz");
        if status == 503 && body.contains("evm_rpc") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let anvil = Anvil::start_on(state, port);
    // anvil keeps its chain but not the clock's offset: the next block continues from the last.
    let last = rpc.block_time_ms(rpc.head().await).await / 1000;
    rpc.call("evm_setNextBlockTimestamp", json!([last + 60]))
        .await;
    trade(10, 2).await;
    dex.rpc.warp(60).await;
    dex.v2_remove(rug_pair, 0.8).await;
    wait_block(addr.clone(), rpc.head().await).await;
    wait_ready(&addr, true);
    collect(&mut ws, &mut got, head_seq(&addr)).await;

    // dexpulse killed mid-stream, started again on its data directory.
    assert_eq!(signal(&mut node, "-KILL"), None);
    drop(ws);
    trade(10, 3).await;
    let (mut node, addr) = spawn_serve_with("chain-restart-2.toml", &config, &[], &[]);
    wait_block(addr.clone(), rpc.head().await).await;
    let (mut ws, w) = open(&addr).await;
    assert_eq!(
        w["epoch"],
        epoch.as_str(),
        "the same epoch on the same directory"
    );
    let last = got.last().map_or(0, |(s, _)| *s);
    let sub = subscribe(&mut ws, Some((&epoch, last))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    collect(&mut ws, &mut got, head_seq(&addr)).await;

    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expect, "every seq once, no gap");
    let mut ids: Vec<String> = got
        .iter()
        .map(|(_, t)| {
            let v: Value = serde_json::from_str(t).unwrap();
            v["event"]["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event twice");
    let kinds: Vec<String> = got
        .iter()
        .map(|(_, t)| serde_json::from_str::<Value>(t).unwrap()["event"]["kind"].to_string())
        .collect();
    assert!(kinds.iter().any(|k| k.contains("rug_warning")), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| k.contains("new_pair")).count() <= 2,
        "{kinds:?}"
    );
    drop(ws);
    assert_eq!(crate::cli::sigterm(&mut node), Some(0));
    drop(anvil);
}

/// Ready, or at least serving data (a chain source with no data yet is not ready).
async fn wait_ready_or_data(addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while crate::cli::http_status(addr, "/healthz").0 != 200 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn head_seq(addr: &str) -> u64 {
    crate::cli::get_json(addr, "/v1/signals?limit=1")["head_seq"]
        .as_u64()
        .unwrap()
}

/// Signal frames from the client until it has `head`, as (seq, frame).
async fn collect(ws: &mut crate::cluster::WsClient, got: &mut Vec<(u64, String)>, head: u64) {
    while got.last().map_or(0, |(s, _)| *s) < head {
        let t = crate::cluster::next_frame(ws).await;
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "signal" {
            got.push((v["seq"].as_u64().unwrap(), t));
        }
    }
}

/// What following N pools costs in JSON-RPC calls per block (BENCHMARKS.md, "The chain
/// source"): the follower against a synthetic chain of 200 blocks in which three pools trade
/// every block, polled once per block, for 10, 100 and 1,000 pools made by one factory. The
/// counts are the follower's own; no time is measured.
#[test]
fn calls_per_block_for_ten_hundred_and_a_thousand_pools() {
    use alloy_primitives::{LogData, B256};
    use alloy_sol_types::SolEvent;
    use dexpulse::chain::abi::{IUniswapV2Factory, IUniswapV2Pair, IERC20};
    use dexpulse::chain::rpc::{Call, What};
    use dexpulse::chain::{Factory, Follower, Settings, Start, Version};

    let factory = Address::repeat_byte(0xfa);
    let usdc = Address::repeat_byte(0xcc);
    let pool = |i: usize| Address::left_padding_from(&(0x10_0000u64 + i as u64).to_be_bytes());
    let token = |i: usize| Address::left_padding_from(&(0x20_0000u64 + i as u64).to_be_bytes());
    let hash = |n: u64| B256::left_padding_from(&n.to_be_bytes());
    let quantity = |n: u64| format!("{n:#x}");
    let log = |address: Address, data: LogData, block: u64, index: u64| {
        json!({
            "address": address, "topics": data.topics(), "data": data.data,
            "blockNumber": quantity(block), "blockHash": hash(block),
            "logIndex": quantity(index), "blockTimestamp": quantity(1_000 + 12 * block),
        })
    };
    let ok = |id: usize, result: Value| json!({"jsonrpc":"2.0","id":id,"result":result});
    let mut rows = Vec::new();
    for n in [10usize, 100, 1_000] {
        let mut f = Follower::new(Settings {
            chain: "synthetic".into(),
            pools: Vec::new(),
            factories: vec![Factory {
                address: factory,
                version: Version::V2,
                dex: "uniswap_v2".into(),
            }],
            quote_tokens: vec![dexpulse::chain::QuoteToken {
                address: usdc,
                price: dexpulse::chain::QuotePrice::Usd(1.0),
            }],
            confirmations: 0,
            start: Start::Block(1),
            max_pools: 2_000,
            blocks_per_logs: 500,
            addresses_per_logs: 500,
            snapshot_every_ms: 60_000,
            burn_window_ms: 1_800_000,
            reorg_depth: 64,
            configured_min_age_ms: 0,
        });
        // The chain's logs: the pools made in block 1, three of them trading every block.
        let logs_of = |from: u64, to: u64, addresses: &[Address]| {
            let mut out = Vec::new();
            for b in from..=to {
                if b == 1 && addresses.contains(&factory) {
                    for i in 0..n {
                        let e = IUniswapV2Factory::PairCreated {
                            token0: token(i),
                            token1: usdc,
                            pair: pool(i),
                            index: U256::from(i),
                        };
                        out.push(log(factory, e.encode_log_data(), 1, i as u64));
                    }
                }
                for i in 0..3 {
                    let p = pool((b as usize * 7 + i * 13) % n);
                    if b < 2 || !addresses.contains(&p) {
                        continue;
                    }
                    let sync = IUniswapV2Pair::Sync {
                        reserve0: alloy_primitives::aliases::U112::from(1_000_000u64 + b),
                        reserve1: alloy_primitives::aliases::U112::from(2_000_000u64),
                    };
                    out.push(log(p, sync.encode_log_data(), b, 2 * i as u64));
                    let swap = IUniswapV2Pair::Swap {
                        sender: p,
                        amount0In: U256::from(1_000u64),
                        amount1In: U256::ZERO,
                        amount0Out: U256::ZERO,
                        amount1Out: U256::from(1_900u64),
                        to: p,
                    };
                    out.push(log(p, swap.encode_log_data(), b, 2 * i as u64 + 1));
                }
            }
            Value::Array(out)
        };
        let mut calls_at_steady = (0usize, 0usize); // (calls, blocks)
        for head in 1..=200u64 {
            f.wake();
            let mut calls = 0;
            while let Some(call) = f.next().cloned() {
                calls += call.weight();
                let body = match &call {
                    Call::Head => ok(1, json!(quantity(head))),
                    Call::Logs {
                        from,
                        to,
                        addresses,
                    } => ok(1, logs_of(*from, *to, addresses)),
                    Call::Headers { numbers } => Value::Array(
                        numbers
                            .iter()
                            .enumerate()
                            .map(|(i, b)| {
                                ok(
                                    i + 1,
                                    json!({"number": quantity(*b), "hash": hash(*b),
                                           "parentHash": hash(b - 1), "timestamp": quantity(1_000 + 12 * b)}),
                                )
                            })
                            .collect(),
                    ),
                    Call::Reads { reads, .. } => Value::Array(
                        reads
                            .iter()
                            .enumerate()
                            .map(|(i, r)| {
                                let data = match r.what {
                                    What::Symbol => IERC20::symbolCall::abi_encode_returns(&"T".to_string()),
                                    What::Decimals => IERC20::decimalsCall::abi_encode_returns(&18u8),
                                    What::TotalSupply => {
                                        IERC20::totalSupplyCall::abi_encode_returns(&U256::from(10u64).pow(U256::from(27)))
                                    }
                                    _ => Vec::new(),
                                };
                                ok(i + 1, json!(Bytes::from(data)))
                            })
                            .collect(),
                    ),
                };
                let out = f.on_reply(&call, &body);
                assert!(out.problems.is_empty(), "{:?}", out.problems);
            }
            // The first blocks are the set-up (the pools' creation, their tokens).
            if head > 20 {
                calls_at_steady.0 += calls;
                calls_at_steady.1 += 1;
            }
        }
        assert_eq!(f.pools(), n);
        let per_block = calls_at_steady.0 as f64 / calls_at_steady.1 as f64;
        rows.push((n, per_block));
    }
    eprintln!("calls per block, caught up, polled every block: {rows:?}");
    // One head, one logs call per 500 addresses (the pools and the factory), one header (a
    // range of one block is its own first and last).
    for (n, per_block) in rows {
        let logs_calls = (n + 1).div_ceil(500) as f64;
        assert_eq!(per_block, 1.0 + logs_calls + 1.0, "{n} pools");
    }
}

/// BENCHMARKS.md, "The chain source": the time from a swap's block being mined on anvil (from
/// its transaction's send: anvil mines it as it takes it) to the pair's new state reaching a
/// WebSocket client subscribed to the `pairs` channel, at two poll intervals. A measurement, not a test; run it with
///
///     cargo test --release --test it -- --ignored --nocapture block_to_client
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn block_to_client_latency() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let anvil = Anvil::start("latency");
    let rpc = Rpc::new(anvil.url()).await;
    let dex = Dex::deploy(rpc.clone()).await;
    let tkn = dex.token("Lat", "LAT", 18).await;
    // A V3 pool: a swap there is one transaction, so one block per measurement.
    let pool = dex.v3_pool(tkn, 1_000_000_000_000_000_000u128).await;
    for poll in [0.1, 2.0] {
        let mut cfg = chain_config(&anvil, &dex);
        cfg.source.evm.poll_seconds = poll;
        let r = crate::server::start_sourced(cfg).await;
        until_block(&r, rpc.head().await).await;
        let mut ws = crate::server::connect(&r).await;
        crate::server::next_json(&mut ws).await;
        ws.send(Message::text(format!(
            r#"{{"op":"subscribe","channel":"pairs","filter":{{"pairs":["anvil:{pool:#x}"]}}}}"#
        )))
        .await
        .unwrap();
        crate::server::next_json(&mut ws).await;
        let mut ms = Vec::new();
        for i in 0..60u64 {
            rpc.warp(5).await;
            let (buy, amount) = if i % 2 == 0 {
                (true, e6(100))
            } else {
                (false, e18(100))
            };
            // anvil mines a transaction as it takes it: from the send, an upper bound.
            let mined = std::time::Instant::now();
            let receipt = dex.v3_swap(pool, tkn, buy, amount).await;
            let block = u64::from_str_radix(
                receipt["blockNumber"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("0x"),
                16,
            )
            .unwrap();
            let at = rpc.block_time_ms(block).await;
            // The pair's state at that block (not an older one still on its way).
            loop {
                let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .unwrap();
                if let Some(Ok(Message::Text(t))) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "pair" && at_ms(&v["pair"]) >= at {
                        break;
                    }
                }
            }
            ms.push(mined.elapsed().as_secs_f64() * 1000.0);
            // Out of phase with the poll: the next swap comes at a random point of it.
            tokio::time::sleep(Duration::from_millis((i * 37) % 100 * (poll * 10.0) as u64)).await;
        }
        ms.sort_by(f64::total_cmp);
        let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "poll {poll} s: block mined to client, {} swaps: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms",
            ms.len(),
            p(0.5),
            p(0.99),
            ms[0]
        );
        r.shutdown().await.unwrap();
    }
}
