// SPDX-License-Identifier: MIT
// What an account needs to mint and swap on a Uniswap V3 pool (which calls its caller back to
// be paid): the same role as v3-core's own TestUniswapV3Callee, which its npm package does not
// ship. The payer approves this contract; the callbacks pull the owed tokens from it.
pragma solidity ^0.8.20;

interface IERC20Like {
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

interface IUniswapV3PoolLike {
    function token0() external view returns (address);
    function token1() external view returns (address);
    function mint(address recipient, int24 tickLower, int24 tickUpper, uint128 amount, bytes calldata data)
        external returns (uint256 amount0, uint256 amount1);
    function swap(address recipient, bool zeroForOne, int256 amountSpecified, uint160 sqrtPriceLimitX96, bytes calldata data)
        external returns (int256 amount0, int256 amount1);
}

contract V3Callee {
    uint160 internal constant MIN_SQRT_RATIO = 4295128739;
    uint160 internal constant MAX_SQRT_RATIO = 1461446703485210103287273052203988822378723970342;

    function mint(address pool, address recipient, int24 tickLower, int24 tickUpper, uint128 amount) external {
        IUniswapV3PoolLike(pool).mint(recipient, tickLower, tickUpper, amount, abi.encode(msg.sender));
    }

    /// Sells exactly `amountIn` of token0 (zeroForOne) or token1 for the other.
    function swapExactIn(address pool, bool zeroForOne, uint256 amountIn, address recipient) external {
        IUniswapV3PoolLike(pool).swap(
            recipient,
            zeroForOne,
            int256(amountIn),
            zeroForOne ? MIN_SQRT_RATIO + 1 : MAX_SQRT_RATIO - 1,
            abi.encode(msg.sender)
        );
    }

    function uniswapV3MintCallback(uint256 amount0Owed, uint256 amount1Owed, bytes calldata data) external {
        address payer = abi.decode(data, (address));
        if (amount0Owed > 0) IERC20Like(IUniswapV3PoolLike(msg.sender).token0()).transferFrom(payer, msg.sender, amount0Owed);
        if (amount1Owed > 0) IERC20Like(IUniswapV3PoolLike(msg.sender).token1()).transferFrom(payer, msg.sender, amount1Owed);
    }

    function uniswapV3SwapCallback(int256 amount0Delta, int256 amount1Delta, bytes calldata data) external {
        address payer = abi.decode(data, (address));
        if (amount0Delta > 0) IERC20Like(IUniswapV3PoolLike(msg.sender).token0()).transferFrom(payer, msg.sender, uint256(amount0Delta));
        if (amount1Delta > 0) IERC20Like(IUniswapV3PoolLike(msg.sender).token1()).transferFrom(payer, msg.sender, uint256(amount1Delta));
    }
}
